use super::string_enum::string_enum;

string_enum! {
    /// How urgent the callback is; picks the queue's SLA target.
    pub enum Priority {
        Normal => "normal",
        /// A valued customer.
        High => "high",
        /// Emergency or distress.
        Urgent => "urgent",
    }
}

// The enum is declared by a macro whose derive list is fixed, so Default is written out.
#[allow(clippy::derivable_impls)]
impl Default for Priority {
    fn default() -> Self {
        Priority::Normal
    }
}
