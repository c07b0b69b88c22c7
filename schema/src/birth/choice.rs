//! The closed sets of string values in a registration (JSON "enums"),
//! serialized as fixed lower-case strings.

use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A closed set of string values (a JSON "enum"). Implemented by
/// [`string_enum!`].
pub(super) trait Choice: Copy + 'static {
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
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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

        impl Choice for $name {
            const ALL: &'static [Self] = $name::ALL;

            fn as_str(self) -> &'static str {
                $name::as_str(self)
            }

            fn parse(s: &str) -> Option<Self> {
                $name::parse(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct ChoiceVisitor;

                impl Visitor<'_> for ChoiceVisitor {
                    type Value = $name;

                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str(&<$name as Choice>::expectation())
                    }

                    fn visit_str<E: de::Error>(self, v: &str) -> Result<$name, E> {
                        // The error does not repeat the input.
                        $name::parse(v).ok_or_else(|| E::custom(<$name as Choice>::expectation()))
                    }
                }

                deserializer.deserialize_str(ChoiceVisitor)
            }
        }
    };
}

string_enum! {
    /// The child's sex as recorded at registration.
    Sex {
        /// `"male"`.
        Male => "male",
        /// `"female"`.
        Female => "female",
    }
}

string_enum! {
    /// Where the birth took place.
    PlaceKind {
        /// `"health_facility"`: a health centre or hospital; the facility's
        /// name is then required.
        HealthFacility => "health_facility",
        /// `"home"`.
        Home => "home",
        /// `"other"`: on the way, in a field, ...
        Other => "other",
    }
}

string_enum! {
    /// Kind of identity document shown for a parent.
    IdDocumentKind {
        /// `"khmer_id_card"`: the Khmer national identity card.
        KhmerIdCard => "khmer_id_card",
        /// `"family_book"`: the family book.
        FamilyBook => "family_book",
        /// `"passport"`.
        Passport => "passport",
    }
}

string_enum! {
    /// The informant's relationship to the child.
    Relationship {
        /// `"mother"`.
        Mother => "mother",
        /// `"father"`.
        Father => "father",
        /// `"grandmother"`.
        Grandmother => "grandmother",
        /// `"grandfather"`.
        Grandfather => "grandfather",
        /// `"grandparent"` (when the record does not say which).
        Grandparent => "grandparent",
        /// `"village_chief"`.
        VillageChief => "village_chief",
        /// `"other"`.
        Other => "other",
    }
}
