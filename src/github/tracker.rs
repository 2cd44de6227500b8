//! `IssueTracker`: what the coordinator does on an issue (status comment, labels, parent
//! lookup). `GithubTracker` does it as a GitHub App through octocrab: a JWT signed with the
//! app's private key buys an installation token scoped to the one repository; tokens are cached
//! until shortly before they expire and never logged.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use octocrab::models::{AppId, InstallationToken};
use octocrab::Octocrab;
use serde_json::{json, Value};
use tokio::sync::Mutex;

#[derive(Debug, thiserror::Error)]
#[error("issue tracker: {0}")]
pub struct TrackerError(pub String);

/// An issue tracker the progress reporter and the budget notices write to.
#[async_trait]
pub trait IssueTracker: Send + Sync + 'static {
    /// Creates a comment on the issue; returns its id.
    async fn create_comment(
        &self,
        repo: &str,
        installation: Option<u64>,
        issue: u64,
        body: &str,
    ) -> Result<u64, TrackerError>;
    async fn update_comment(
        &self,
        repo: &str,
        installation: Option<u64>,
        comment_id: u64,
        body: &str,
    ) -> Result<(), TrackerError>;
    /// The id of the issue's comment containing `marker`, if there is one (first 100 comments):
    /// finds a status comment whose creation was not recorded (crash, lost answer).
    async fn find_comment(
        &self,
        _repo: &str,
        _installation: Option<u64>,
        _issue: u64,
        _marker: &str,
    ) -> Result<Option<u64>, TrackerError> {
        Ok(None)
    }
    /// Adds `add` and removes `remove` (absent labels are not an error).
    async fn set_labels(
        &self,
        repo: &str,
        installation: Option<u64>,
        issue: u64,
        add: &[&str],
        remove: &[&str],
    ) -> Result<(), TrackerError>;
    /// The parent issue's number when `issue` is a sub-issue.
    async fn parent_issue(
        &self,
        repo: &str,
        installation: Option<u64>,
        issue: u64,
    ) -> Result<Option<u64>, TrackerError>;
}

fn split(repo: &str) -> Result<(&str, &str), TrackerError> {
    repo.split_once('/')
        .filter(|(o, n)| !o.is_empty() && !n.is_empty() && !n.contains('/'))
        .ok_or_else(|| TrackerError(format!("`{repo}` is not owner/name")))
}

fn gh(e: octocrab::Error) -> TrackerError {
    // octocrab's errors carry the status and GitHub's message, never our credentials.
    match e {
        octocrab::Error::GitHub { source, .. } => TrackerError(format!(
            "GitHub answered {}: {}",
            source.status_code, source.message
        )),
        other => TrackerError(format!("{other}")),
    }
}

/// A GitHub App's identity: app id and private key (PEM).
pub struct GithubTracker {
    app: Octocrab,
    base_uri: String,
    /// Installation token clients per (installation, repository), with their expiry.
    clients: Mutex<HashMap<(u64, String), (Octocrab, Instant)>>,
    installations: Mutex<HashMap<String, u64>>,
}

impl std::fmt::Debug for GithubTracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GithubTracker")
            .field("base_uri", &self.base_uri)
            .finish_non_exhaustive()
    }
}

impl GithubTracker {
    /// `private_key_pem` is the app's RSA key; errors never include it.
    pub fn new(
        base_uri: &str,
        app_id: u64,
        private_key_pem: &[u8],
    ) -> Result<GithubTracker, TrackerError> {
        let key = octocrab::EncodingKey::from_rsa_pem(private_key_pem)
            .map_err(|_| TrackerError("the private key is not an RSA key in PEM format".into()))?;
        let app = Octocrab::builder()
            .base_uri(base_uri)
            .map_err(|_| TrackerError(format!("bad GitHub API URL `{base_uri}`")))?
            .app(AppId(app_id), key)
            .build()
            .map_err(gh)?;
        Ok(GithubTracker {
            app,
            base_uri: base_uri.to_string(),
            clients: Mutex::new(HashMap::new()),
            installations: Mutex::new(HashMap::new()),
        })
    }

    async fn installation_for(&self, repo: &str, given: Option<u64>) -> Result<u64, TrackerError> {
        if let Some(id) = given {
            return Ok(id);
        }
        if let Some(id) = self.installations.lock().await.get(repo) {
            return Ok(*id);
        }
        let (owner, name) = split(repo)?;
        let found: Value = self
            .app
            .get(format!("/repos/{owner}/{name}/installation"), None::<&()>)
            .await
            .map_err(gh)?;
        let id = found["id"]
            .as_u64()
            .ok_or_else(|| TrackerError(format!("no installation id for {repo}")))?;
        self.installations.lock().await.insert(repo.to_string(), id);
        Ok(id)
    }

    /// A client holding an installation token scoped to `repo` alone.
    async fn client(
        &self,
        repo: &str,
        installation: Option<u64>,
    ) -> Result<Octocrab, TrackerError> {
        let id = self.installation_for(repo, installation).await?;
        let (_, name) = split(repo)?;
        let key = (id, repo.to_string());
        let mut clients = self.clients.lock().await;
        if let Some((client, valid_until)) = clients.get(&key) {
            if Instant::now() < *valid_until {
                return Ok(client.clone());
            }
        }
        let token: InstallationToken = self
            .app
            .post(
                format!("/app/installations/{id}/access_tokens"),
                Some(&json!({ "repositories": [name] })),
            )
            .await
            .map_err(gh)?;
        // Installation tokens live an hour; refresh five minutes early (or after 50 minutes
        // when the expiry cannot be read).
        let lifetime = token
            .expires_at
            .as_deref()
            .and_then(seconds_until)
            .map(|s| Duration::from_secs(s.saturating_sub(300)))
            .unwrap_or(Duration::from_secs(3000));
        let client = Octocrab::builder()
            .base_uri(self.base_uri.as_str())
            .map_err(|_| TrackerError("bad GitHub API URL".into()))?
            .personal_token(token.token)
            .build()
            .map_err(gh)?;
        clients.insert(key, (client.clone(), Instant::now() + lifetime));
        Ok(client)
    }
}

/// Seconds from now until an RFC 3339 UTC time like `2016-07-11T22:14:10Z`.
fn seconds_until(at: &str) -> Option<u64> {
    let epoch = super::routing::epoch_seconds(at)?;
    let now = crate::task::now_ms() / 1000;
    Some((epoch - now).max(0) as u64)
}

#[async_trait]
impl IssueTracker for GithubTracker {
    async fn create_comment(
        &self,
        repo: &str,
        installation: Option<u64>,
        issue: u64,
        body: &str,
    ) -> Result<u64, TrackerError> {
        let (owner, name) = split(repo)?;
        let client = self.client(repo, installation).await?;
        let comment = client
            .issues(owner, name)
            .create_comment(issue, body)
            .await
            .map_err(gh)?;
        Ok(comment.id.0)
    }

    async fn update_comment(
        &self,
        repo: &str,
        installation: Option<u64>,
        comment_id: u64,
        body: &str,
    ) -> Result<(), TrackerError> {
        let (owner, name) = split(repo)?;
        let client = self.client(repo, installation).await?;
        // GitHub documents PATCH for this endpoint; octocrab 0.54's `update_comment` sends POST.
        let _: octocrab::models::issues::Comment = client
            .patch(
                format!("/repos/{owner}/{name}/issues/comments/{comment_id}"),
                Some(&json!({ "body": body })),
            )
            .await
            .map_err(gh)?;
        Ok(())
    }

    async fn find_comment(
        &self,
        repo: &str,
        installation: Option<u64>,
        issue: u64,
        marker: &str,
    ) -> Result<Option<u64>, TrackerError> {
        let (owner, name) = split(repo)?;
        let client = self.client(repo, installation).await?;
        let page = client
            .issues(owner, name)
            .list_comments(issue)
            .per_page(100u8)
            .send()
            .await
            .map_err(gh)?;
        Ok(page
            .items
            .iter()
            .find(|c| c.body.as_deref().is_some_and(|b| b.contains(marker)))
            .map(|c| c.id.0))
    }

    async fn set_labels(
        &self,
        repo: &str,
        installation: Option<u64>,
        issue: u64,
        add: &[&str],
        remove: &[&str],
    ) -> Result<(), TrackerError> {
        let (owner, name) = split(repo)?;
        let client = self.client(repo, installation).await?;
        let issues = client.issues(owner, name);
        for label in remove {
            match issues.remove_label(issue, label).await {
                Ok(_) => {}
                Err(octocrab::Error::GitHub { source, .. }) if source.status_code == 404 => {}
                Err(e) => return Err(gh(e)),
            }
        }
        if !add.is_empty() {
            let add: Vec<String> = add.iter().map(|s| s.to_string()).collect();
            issues.add_labels(issue, &add).await.map_err(gh)?;
        }
        Ok(())
    }

    async fn parent_issue(
        &self,
        repo: &str,
        installation: Option<u64>,
        issue: u64,
    ) -> Result<Option<u64>, TrackerError> {
        let (owner, name) = split(repo)?;
        let client = self.client(repo, installation).await?;
        let route = format!("/repos/{owner}/{name}/issues/{issue}/parent");
        match client.get::<Value, _, ()>(route, None).await {
            Ok(parent) => Ok(parent["number"].as_u64()),
            Err(octocrab::Error::GitHub { source, .. }) if source.status_code == 404 => Ok(None),
            Err(e) => Err(gh(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn expiry_parses() {
        assert_eq!(super::seconds_until("2016-07-11T22:14:10Z"), Some(0));
        let far = super::seconds_until("2999-01-01T00:00:00Z").unwrap();
        assert!(far > 100 * 365 * 86400);
        assert_eq!(super::seconds_until("nope"), None);
    }
}
