//! `devgem token create <user>`: creates the user if new and issues a token. Asks the running
//! server when there is one (`--server`, `DEVGEM_SERVER`, or the data dir's `server.json`),
//! authenticated with `DEVGEM_TOKEN` or the data dir's admin token; otherwise works in-process on
//! the data dir, refusing if another process holds it.

use crate::embedded::Embedded;
use crate::up::{ADMIN_TOKEN_FILE, lock_data_dir, running_server};
use anyhow::{Context, bail};
use devgem_common::identity::{IdentityError, Token};
use devgem_common::ids::UserId;
use serde::Deserialize;
use std::path::Path;

#[derive(Debug, Deserialize)]
struct Issued {
    token: String,
}

#[derive(Debug, Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Debug, Deserialize)]
struct ErrorDetail {
    message: String,
}

/// The admin token for talking to a server: `DEVGEM_TOKEN`, else the data dir's file.
pub fn admin_token(data_dir: &Path) -> anyhow::Result<Token> {
    if let Some(token) = crate::up::preset_token()? {
        return Ok(token);
    }
    let path = data_dir.join(ADMIN_TOKEN_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!("no admin token: set DEVGEM_TOKEN or run 'devgem up' once to create {}", path.display())
    })?;
    Token::parse(&text).with_context(|| format!("{} does not hold a valid token", path.display()))
}

pub async fn create(data_dir: &Path, user: &str, name: Option<&str>, server: Option<&str>) -> anyhow::Result<Token> {
    let id = UserId::parse(user)?;
    if id == UserId::system() {
        bail!("'system' is reserved; pick another user id");
    }
    let server = server.map(str::to_owned).or_else(|| running_server(data_dir).map(|s| s.url));
    match server {
        Some(url) => create_via_server(&url, &admin_token(data_dir)?, &id, name).await,
        None => create_in_process(data_dir, &id, name).await,
    }
}

async fn create_via_server(url: &str, admin: &Token, id: &UserId, name: Option<&str>) -> anyhow::Result<Token> {
    let client = reqwest::Client::new();
    let base = url.trim_end_matches('/');
    let body = serde_json::json!({ "id": id, "name": name });
    let response = client
        .post(format!("{base}/api/users"))
        .bearer_auth(admin.expose())
        .json(&body)
        .send()
        .await
        .with_context(|| format!("cannot reach the server at {base}; is 'devgem up' running?"))?;
    let response = if response.status() == reqwest::StatusCode::CONFLICT {
        client.post(format!("{base}/api/users/{id}/tokens")).bearer_auth(admin.expose()).send().await?
    } else {
        response
    };
    let status = response.status();
    if !status.is_success() {
        let message =
            response.json::<ErrorBody>().await.map(|b| b.error.message).unwrap_or_else(|_| status.to_string());
        bail!("the server refused: {message}");
    }
    let issued: Issued = response.json().await.context("the server's answer is not a token")?;
    Ok(Token::parse(&issued.token)?)
}

async fn create_in_process(data_dir: &Path, id: &UserId, name: Option<&str>) -> anyhow::Result<Token> {
    let _lock = lock_data_dir(data_dir)?;
    let embedded = Embedded::open(data_dir, true)?.with_data_plane_from_env().await?;
    match embedded.identity.create_user(id, name.unwrap_or(id.as_str()), false, None).await {
        Ok((_, token)) => Ok(token),
        Err(IdentityError::UserExists(_)) => Ok(embedded.identity.issue_token(id).await?),
        Err(e) => Err(e.into()),
    }
}
