//! Text fields: names, free text (facility and court names, causes of
//! death), document numbers and remarks.
//! No control characters, no bidirectional controls, no invisible
//! characters other than those the field's [`Script`] allows.

use serde_json::Value;

use super::{
    MAX_DOCUMENT_NUMBER_CHARS, MAX_FACILITY_NAME_CHARS, MAX_NAME_CHARS, MAX_REMARKS_CHARS, Validator,
};
use crate::birth::{normalize_latin_name, normalize_name};
use crate::text;

/// Which script a text field holds, for its invisible characters.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Script {
    /// Khmer (or free text): the zero-width space and the joiners are
    /// allowed.
    Khmer,
    /// Latin transliteration: the zero-width characters are allowed and
    /// removed.
    Latin,
    /// Document numbers: no invisible character at all.
    Code,
}

impl Validator {
    /// Reports control characters (other than the whitespace `space_ok`
    /// allows), bidirectional controls and invisible characters other than
    /// those `script` allows. `None` when it reported one.
    fn plain_text(&mut self, raw: &str, path: &str, script: Script, space_ok: bool) -> Option<()> {
        if raw
            .chars()
            .any(|c| c.is_control() && !(space_ok && c.is_whitespace()))
        {
            self.report(path, "must not contain control characters");
            return None;
        }
        if raw.chars().any(text::is_bidi_control) {
            self.report(
                path,
                "must not contain bidirectional control characters (such as a right-to-left override)",
            );
            return None;
        }
        let allowed = |c: char| match script {
            Script::Khmer | Script::Latin => text::is_khmer_zero_width(c) || c == text::BYTE_ORDER_MARK,
            Script::Code => false,
        };
        if raw.chars().any(|c| text::is_invisible(c) && !allowed(c)) {
            self.report(
                path,
                match script {
                    Script::Code => "must not contain invisible characters",
                    _ => {
                        "must not contain invisible characters (only the zero-width space and the \
                         joiners U+200C and U+200D are allowed)"
                    }
                },
            );
            return None;
        }
        Some(())
    }

    /// A normalized string of at most `max` characters, possibly empty.
    fn normalized(&mut self, value: &Value, path: &str, max: usize, script: Script) -> Option<String> {
        let raw = self.string(value, path)?;
        // Tabs and line breaks are whitespace, collapsed by normalization.
        self.plain_text(raw, path, script, true)?;
        let name = match script {
            Script::Latin => normalize_latin_name(raw),
            Script::Khmer | Script::Code => normalize_name(raw),
        };
        if name.chars().count() > max {
            self.report(path, format!("must be at most {max} characters long"));
            return None;
        }
        Some(name)
    }

    /// A non-empty name in Khmer script, normalized.
    pub(crate) fn name(&mut self, value: &Value, path: &str) -> Option<String> {
        self.name_in(value, path, Script::Khmer)
    }

    /// A non-empty name in Latin script, normalized.
    pub(crate) fn latin_name(&mut self, value: &Value, path: &str) -> Option<String> {
        self.name_in(value, path, Script::Latin)
    }

    fn name_in(&mut self, value: &Value, path: &str, script: Script) -> Option<String> {
        let name = self.normalized(value, path, MAX_NAME_CHARS, script)?;
        if name.is_empty() {
            self.report(path, "must not be empty");
            return None;
        }
        Some(name)
    }

    /// A health facility's name, normalized; may be empty (checked by the
    /// caller, since it depends on the kind of place).
    pub(crate) fn facility_name(&mut self, value: &Value, path: &str) -> Option<String> {
        self.normalized(value, path, MAX_FACILITY_NAME_CHARS, Script::Khmer)
    }

    /// Non-empty free text in Khmer (or mixed) script of at most `max`
    /// characters, normalized as a name is: a court's name, a cause of
    /// death.
    pub(crate) fn free_text(&mut self, value: &Value, path: &str, max: usize) -> Option<String> {
        let text = self.normalized(value, path, max, Script::Khmer)?;
        if text.is_empty() {
            self.report(path, "must not be empty");
            return None;
        }
        Some(text)
    }

    pub(crate) fn document_number(&mut self, value: &Value, path: &str) -> Option<String> {
        let number = self.string(value, path)?.trim();
        if number.is_empty() {
            self.report(path, "must not be empty");
            None
        } else if number.chars().count() > MAX_DOCUMENT_NUMBER_CHARS {
            self.report(
                path,
                format!("must be at most {MAX_DOCUMENT_NUMBER_CHARS} characters long"),
            );
            None
        } else {
            self.plain_text(number, path, Script::Code, false)?;
            Some(number.to_owned())
        }
    }

    pub(crate) fn remarks(&mut self, value: &Value, path: &str) -> Option<String> {
        let remarks = self.string(value, path)?;
        if remarks.trim().is_empty() {
            self.report(path, "must not be empty (leave the field out instead)");
            None
        } else if remarks.chars().count() > MAX_REMARKS_CHARS {
            self.report(
                path,
                format!("must be at most {MAX_REMARKS_CHARS} characters long"),
            );
            None
        } else {
            // Line breaks and tabs are fine in remarks.
            self.plain_text(remarks, path, Script::Khmer, true)?;
            Some(remarks.to_owned())
        }
    }
}
