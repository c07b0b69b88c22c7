//! The closed sets of string values in a birth registration (JSON
//! "enums"), serialized as fixed lower-case strings.

use crate::validation::string_enum;

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
