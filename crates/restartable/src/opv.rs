//! The user-space CPU op vector (placeholder: being written).
