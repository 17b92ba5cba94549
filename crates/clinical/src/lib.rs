//! Sans-I/O clinical logic: qSOFA sepsis windows and immunization counts.
