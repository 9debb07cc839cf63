//! Tests of every transition and refusal.
