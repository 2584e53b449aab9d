//! `users/{id}`: who someone is, and the hashes of their tokens (never the tokens).

use crate::identity::TokenHash;
use crate::ids::UserId;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    Free,
    Pro,
    Admin,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub id: UserId,
    pub name: String,
    pub admin: bool,
    pub tier: Tier,
    pub token_hashes: Vec<TokenHash>,
    pub created_at: DateTime<Utc>,
}
