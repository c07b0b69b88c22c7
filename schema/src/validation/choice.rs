//! The closed sets of string values in a registration (JSON "enums"),
//! serialized as fixed lower-case strings: the [`Choice`] trait and the
//! [`string_enum!`] macro that defines them.

/// A closed set of string values (a JSON "enum"). Implemented by
/// [`string_enum!`].
pub(crate) trait Choice: Copy + 'static {
    const ALL: &'static [Self];
    fn as_str(self) -> &'static str;
    fn parse(s: &str) -> Option<Self>;

    /// "must be one of a, b, c".
    fn expectation() -> String {
        let values: Vec<&str> = Self::ALL.iter().map(|v| v.as_str()).collect();
        format!("must be one of {}", values.join(", "))
    }
}

/// Defines a public enum serialized as fixed lower-case strings.
macro_rules! string_enum {
    (
        $(#[$meta:meta])*
        $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident => $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The value's JSON string.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }

            /// The value whose JSON string is `s`, if any.
            pub fn parse(s: &str) -> Option<$name> {
                match s {
                    $($text => Some($name::$variant),)+
                    _ => None,
                }
            }
        }

        impl $crate::validation::Choice for $name {
            const ALL: &'static [Self] = $name::ALL;

            fn as_str(self) -> &'static str {
                $name::as_str(self)
            }

            fn parse(s: &str) -> Option<Self> {
                $name::parse(s)
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::serde::Serialize for $name {
            fn serialize<S: ::serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct ChoiceVisitor;

                impl ::serde::de::Visitor<'_> for ChoiceVisitor {
                    type Value = $name;

                    fn expecting(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                        f.write_str(&<$name as $crate::validation::Choice>::expectation())
                    }

                    fn visit_str<E: ::serde::de::Error>(self, v: &str) -> Result<$name, E> {
                        // The error does not repeat the input.
                        $name::parse(v).ok_or_else(|| {
                            E::custom(<$name as $crate::validation::Choice>::expectation())
                        })
                    }
                }

                deserializer.deserialize_str(ChoiceVisitor)
            }
        }
    };
}

pub(crate) use string_enum;
