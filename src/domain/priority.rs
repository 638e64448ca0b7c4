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

impl Default for Priority {
    fn default() -> Self {
        Priority::Normal
    }
}
