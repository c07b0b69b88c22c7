//! The closed lists of the events other than birth, serialized as fixed
//! lower-case strings. Each list is documented in the README.

use crate::validation::string_enum;

string_enum! {
    /// Which vital event a registration records: the JSON field `"event"`.
    EventKind {
        /// `"birth"`.
        Birth => "birth",
        /// `"death"`.
        Death => "death",
        /// `"marriage"`.
        Marriage => "marriage",
        /// `"divorce"`.
        Divorce => "divorce",
        /// `"adoption"`.
        Adoption => "adoption",
        /// `"amendment"`.
        Amendment => "amendment",
    }
}

string_enum! {
    /// A person's marital status: of the deceased at death, of a spouse
    /// before the marriage.
    MaritalStatus {
        /// `"never_married"`.
        NeverMarried => "never_married",
        /// `"married"`: refused for a spouse before a marriage.
        Married => "married",
        /// `"divorced"`.
        Divorced => "divorced",
        /// `"widowed"`.
        Widowed => "widowed",
    }
}

string_enum! {
    /// Who established the cause of death (`cause_of_death.certified_by`).
    CertifiedBy {
        /// `"physician"`: a medical doctor, on a medical certificate of
        /// cause of death.
        Physician => "physician",
        /// `"health_worker"`: a nurse, a midwife or another health worker
        /// who is not a doctor.
        HealthWorker => "health_worker",
        /// `"forensic"`: a forensic (police) medical examination, for
        /// violent or unexplained deaths.
        Forensic => "forensic",
        /// `"verbal_autopsy"`: a verbal autopsy, an interview of the
        /// family by trained staff after a death without medical care.
        VerbalAutopsy => "verbal_autopsy",
        /// `"lay_reporting"`: as the informant reports it, without any
        /// medical assessment.
        LayReporting => "lay_reporting",
    }
}

string_enum! {
    /// The informant's relationship to the deceased.
    DeathInformantRelationship {
        /// `"spouse"`.
        Spouse => "spouse",
        /// `"son"`.
        Son => "son",
        /// `"daughter"`.
        Daughter => "daughter",
        /// `"mother"`.
        Mother => "mother",
        /// `"father"`.
        Father => "father",
        /// `"sibling"`.
        Sibling => "sibling",
        /// `"grandchild"`.
        Grandchild => "grandchild",
        /// `"other_relative"`.
        OtherRelative => "other_relative",
        /// `"village_chief"`.
        VillageChief => "village_chief",
        /// `"health_worker"`.
        HealthWorker => "health_worker",
        /// `"police"`.
        Police => "police",
        /// `"other"`.
        Other => "other",
    }
}

string_enum! {
    /// Why a registration is amended (`reason`).
    AmendmentReason {
        /// `"given_name_added"`: the family chose the child's given name
        /// after the registration. Changes `child.given_name` and
        /// `child.given_name_latin` only.
        GivenNameAdded => "given_name_added",
        /// `"clerical_error"`: the registration was typed wrong; the
        /// correction matches the documents shown at registration.
        ClericalError => "clerical_error",
        /// `"paternity_acknowledged"`: the father acknowledges the child
        /// after the registration. Changes `father.*`,
        /// `child.family_name` and `child.family_name_latin` only.
        PaternityAcknowledged => "paternity_acknowledged",
        /// `"court_order"`: a court ordered the change.
        CourtOrder => "court_order",
        /// `"name_change"`: an administrative change of name, decided by
        /// the competent authority.
        NameChange => "name_change",
    }
}

string_enum! {
    /// A field of a birth registration that an amendment may change, by
    /// its dotted path (`"child.given_name"`). Server-owned fields (the
    /// KIdC, the registration's server part) and the `event` are not
    /// among them.
    BirthField {
        /// `"child.family_name"`.
        ChildFamilyName => "child.family_name",
        /// `"child.given_name"`.
        ChildGivenName => "child.given_name",
        /// `"child.family_name_latin"`.
        ChildFamilyNameLatin => "child.family_name_latin",
        /// `"child.given_name_latin"`.
        ChildGivenNameLatin => "child.given_name_latin",
        /// `"child.sex"`.
        ChildSex => "child.sex",
        /// `"child.date_of_birth"`.
        ChildDateOfBirth => "child.date_of_birth",
        /// `"child.place_of_birth.kind"`.
        ChildPlaceOfBirthKind => "child.place_of_birth.kind",
        /// `"child.place_of_birth.facility_name"`.
        ChildPlaceOfBirthFacilityName => "child.place_of_birth.facility_name",
        /// `"child.place_of_birth.village_code"`.
        ChildPlaceOfBirthVillageCode => "child.place_of_birth.village_code",
        /// `"mother.family_name"`.
        MotherFamilyName => "mother.family_name",
        /// `"mother.given_name"`.
        MotherGivenName => "mother.given_name",
        /// `"mother.family_name_latin"`.
        MotherFamilyNameLatin => "mother.family_name_latin",
        /// `"mother.given_name_latin"`.
        MotherGivenNameLatin => "mother.given_name_latin",
        /// `"mother.date_of_birth"`.
        MotherDateOfBirth => "mother.date_of_birth",
        /// `"mother.nationality"`.
        MotherNationality => "mother.nationality",
        /// `"mother.id_document.kind"`.
        MotherIdDocumentKind => "mother.id_document.kind",
        /// `"mother.id_document.number"`.
        MotherIdDocumentNumber => "mother.id_document.number",
        /// `"father.family_name"`.
        FatherFamilyName => "father.family_name",
        /// `"father.given_name"`.
        FatherGivenName => "father.given_name",
        /// `"father.family_name_latin"`.
        FatherFamilyNameLatin => "father.family_name_latin",
        /// `"father.given_name_latin"`.
        FatherGivenNameLatin => "father.given_name_latin",
        /// `"father.date_of_birth"`.
        FatherDateOfBirth => "father.date_of_birth",
        /// `"father.nationality"`.
        FatherNationality => "father.nationality",
        /// `"father.id_document.kind"`.
        FatherIdDocumentKind => "father.id_document.kind",
        /// `"father.id_document.number"`.
        FatherIdDocumentNumber => "father.id_document.number",
        /// `"informant.relationship"`.
        InformantRelationship => "informant.relationship",
        /// `"informant.family_name"`.
        InformantFamilyName => "informant.family_name",
        /// `"informant.given_name"`.
        InformantGivenName => "informant.given_name",
        /// `"residence_village_code"`.
        ResidenceVillageCode => "residence_village_code",
        /// `"registered_away_from_residence"`.
        RegisteredAwayFromResidence => "registered_away_from_residence",
        /// `"remarks"`.
        Remarks => "remarks",
    }
}
