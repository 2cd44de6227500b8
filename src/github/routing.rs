//! Routing rules: a verified delivery becomes a task, a cancel, or is ignored with a reason.
//! Pure (no I/O): [`extract`] reads the facts a rule needs (through octocrab's webhook models
//! where they parse, plain JSON field access where they do not), [`decide`] applies the rules.

use std::collections::BTreeMap;

use octocrab::models::webhook_events::{WebhookEvent, WebhookEventPayload};
use serde::Deserialize;
use serde_json::{json, Value};

/// Configurable rules (the `rules` object of `--github-config`); defaults suit most setups.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Rules {
    /// An issue label `<label_prefix><type>` triggers a task of that agent type.
    pub label_prefix: String,
    /// Extra labels mapped to agent types (e.g. `"bug": "coder"`).
    pub labels: BTreeMap<String, String>,
    /// A comment starting `<command> <type> [text]` triggers a task of that type.
    pub command: String,
    /// `author_association` values allowed to use the command.
    pub allowed_associations: Vec<String>,
    /// Agent type for `pull_request_review_comment` `created` (none: ignored).
    pub review_comment_agent: Option<String>,
    /// Label/edit events on one issue within this many seconds become one task (0: off, every
    /// delivery is its own task).
    pub debounce_seconds: u64,
    /// Runs started per issue per hour, and per repository per hour (0: unlimited).
    pub max_runs_per_issue_per_hour: u32,
    pub max_runs_per_repository_per_hour: u32,
    /// Priority of triggered tasks.
    pub priority: i64,
    /// Agent type of the "resume parent" task when a sub-issue's task finishes (none: the
    /// finished task's type).
    pub resume_parent_agent: Option<String>,
    pub resume_priority: i64,
    /// At most one queued/running task per (issue, agent type); later triggers wait behind it
    /// (false: every trigger is enqueued at once).
    pub one_task_per_issue: bool,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            label_prefix: "agent:".into(),
            labels: BTreeMap::new(),
            command: "/agent".into(),
            allowed_associations: vec!["OWNER".into(), "MEMBER".into(), "COLLABORATOR".into()],
            review_comment_agent: None,
            debounce_seconds: 10,
            max_runs_per_issue_per_hour: 5,
            max_runs_per_repository_per_hour: 100,
            priority: 0,
            resume_parent_agent: None,
            resume_priority: -100,
            one_task_per_issue: true,
        }
    }
}

/// Who the app is, so its own events never trigger work.
#[derive(Debug, Clone, Default)]
pub struct AppIdentity {
    pub app_id: Option<u64>,
    /// The bot's login, e.g. `my-app[bot]`.
    pub bot_login: Option<String>,
}

/// What the rules look at, whichever way the payload was read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Facts {
    pub event: String,
    pub action: String,
    pub repository: Option<String>,
    pub installation_id: Option<u64>,
    pub number: Option<u64>,
    pub title: Option<String>,
    pub body: Option<String>,
    pub url: Option<String>,
    /// Seconds since the epoch of the issue's last change (the debounce window's clock).
    pub updated_at: Option<i64>,
    pub sender_login: Option<String>,
    pub sender_type: Option<String>,
    pub label: Option<String>,
    pub comment_id: Option<u64>,
    pub comment_body: Option<String>,
    pub author_association: Option<String>,
    pub performed_via_app_id: Option<u64>,
}

/// A task to create.
#[derive(Debug, Clone, PartialEq)]
pub struct Trigger {
    pub agent_type: String,
    pub repository: String,
    pub number: u64,
    pub installation_id: Option<u64>,
    pub payload: Value,
    pub idempotency_key: String,
    pub priority: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Submit(Trigger),
    /// The trigger label was removed: cancel the issue's queued/running tasks of this type.
    Cancel {
        repository: String,
        number: u64,
        agent_type: String,
    },
    Ignore(String),
    /// Ignored because the payload lacks a field the rule needs (the message names it).
    Missing(String),
}

/// Events whose payload matters to the rules (others are ignored without reading the body).
pub fn is_routed(event: &str) -> bool {
    matches!(
        event,
        "issues" | "issue_comment" | "pull_request_review_comment"
    )
}

/// Reads the facts of a routed event in one pass over the body.
///
/// The hot path reads the dozen fields the rules look at through `view::Delivery`, a
/// borrowed view that skips everything else (~8 µs for a 14 KB `issues` payload). octocrab's
/// full models (`WebhookEvent::try_from_header_and_body`) cost 60–140 µs for the same body —
/// they build the whole document, every URL parsed, through an intermediate `Value` — which
/// alone would cap a core at a few thousand deliveries/s. They stay the reference: a test
/// checks that this view reads the same facts as [`facts_from_model`] on every fixture, and a
/// payload missing a needed field is explained through them ([`explain_missing`]).
///
/// A body whose shape the view refuses (a field of an unexpected type) is read field by field
/// from a `Value` instead, so a surprising payload is ignored with a reason, never an error.
pub fn extract(event: &str, body: &[u8]) -> Result<Facts, String> {
    match serde_json::from_slice::<view::Delivery<'_>>(body) {
        Ok(delivery) => Ok(delivery.facts(event)),
        Err(_) => {
            let raw: Value =
                serde_json::from_slice(body).map_err(|e| format!("body is not valid JSON: {e}"))?;
            if !raw.is_object() {
                return Err("body is not a JSON object".into());
            }
            Ok(from_json(event, &raw))
        }
    }
}

/// The tolerant reading: each field taken where it has the expected type.
fn from_json(event: &str, raw: &Value) -> Facts {
    let s = |v: &Value| v.as_str().map(str::to_string);
    let subject = match event {
        "pull_request_review_comment" => &raw["pull_request"],
        _ => &raw["issue"],
    };
    let comment = &raw["comment"];
    Facts {
        event: event.to_string(),
        action: raw["action"].as_str().unwrap_or("").to_string(),
        repository: s(&raw["repository"]["full_name"]),
        installation_id: raw["installation"]["id"].as_u64(),
        number: subject["number"].as_u64(),
        title: s(&subject["title"]),
        body: s(&subject["body"]),
        url: s(&subject["html_url"]),
        updated_at: subject["updated_at"].as_str().and_then(epoch_seconds),
        sender_login: s(&raw["sender"]["login"]),
        sender_type: s(&raw["sender"]["type"]),
        label: s(&raw["label"]["name"]),
        comment_id: comment["id"].as_u64(),
        comment_body: s(&comment["body"]),
        author_association: s(&comment["author_association"]),
        performed_via_app_id: comment["performed_via_github_app"]["id"]
            .as_u64()
            .or_else(|| subject["performed_via_github_app"]["id"].as_u64()),
    }
}

/// The borrowed view of a delivery: only what [`Facts`] holds; strings borrowed from the body
/// unless they contain escapes.
mod view {
    use std::borrow::Cow;

    use serde::Deserialize;

    use super::{epoch_seconds, Facts};

    type Text<'a> = Option<Cow<'a, str>>;

    fn owned(text: &Text<'_>) -> Option<String> {
        text.as_deref().map(str::to_string)
    }

    #[derive(Deserialize)]
    pub struct Delivery<'a> {
        #[serde(borrow)]
        action: Text<'a>,
        #[serde(borrow)]
        repository: Option<Repository<'a>>,
        installation: Option<Id>,
        #[serde(borrow)]
        issue: Option<Subject<'a>>,
        #[serde(borrow)]
        pull_request: Option<Subject<'a>>,
        #[serde(borrow)]
        sender: Option<Sender<'a>>,
        #[serde(borrow)]
        label: Option<Label<'a>>,
        #[serde(borrow)]
        comment: Option<Comment<'a>>,
    }

    #[derive(Deserialize)]
    struct Repository<'a> {
        #[serde(borrow)]
        full_name: Text<'a>,
    }

    #[derive(Deserialize)]
    struct Id {
        id: Option<u64>,
    }

    #[derive(Deserialize)]
    struct Subject<'a> {
        number: Option<u64>,
        #[serde(borrow)]
        title: Text<'a>,
        #[serde(borrow)]
        body: Text<'a>,
        #[serde(borrow)]
        html_url: Text<'a>,
        #[serde(borrow)]
        updated_at: Text<'a>,
        performed_via_github_app: Option<Id>,
    }

    #[derive(Deserialize)]
    struct Sender<'a> {
        #[serde(borrow)]
        login: Text<'a>,
        #[serde(borrow, rename = "type")]
        kind: Text<'a>,
    }

    #[derive(Deserialize)]
    struct Label<'a> {
        #[serde(borrow)]
        name: Text<'a>,
    }

    #[derive(Deserialize)]
    struct Comment<'a> {
        id: Option<u64>,
        #[serde(borrow)]
        body: Text<'a>,
        #[serde(borrow)]
        author_association: Text<'a>,
        performed_via_github_app: Option<Id>,
    }

    impl Delivery<'_> {
        pub fn facts(&self, event: &str) -> Facts {
            let subject = match event {
                "pull_request_review_comment" => self.pull_request.as_ref(),
                _ => self.issue.as_ref(),
            };
            let app_id = |via: Option<&Id>| via.and_then(|a| a.id);
            let comment = self.comment.as_ref();
            Facts {
                event: event.to_string(),
                action: self.action.as_deref().unwrap_or("").to_string(),
                repository: self.repository.as_ref().and_then(|r| owned(&r.full_name)),
                installation_id: self.installation.as_ref().and_then(|i| i.id),
                number: subject.and_then(|s| s.number),
                title: subject.and_then(|s| owned(&s.title)),
                body: subject.and_then(|s| owned(&s.body)),
                url: subject.and_then(|s| owned(&s.html_url)),
                updated_at: subject
                    .and_then(|s| s.updated_at.as_deref())
                    .and_then(epoch_seconds),
                sender_login: self.sender.as_ref().and_then(|s| owned(&s.login)),
                sender_type: self.sender.as_ref().and_then(|s| owned(&s.kind)),
                label: self.label.as_ref().and_then(|l| owned(&l.name)),
                comment_id: comment.and_then(|c| c.id),
                comment_body: comment.and_then(|c| owned(&c.body)),
                author_association: comment.and_then(|c| owned(&c.author_association)),
                performed_via_app_id: app_id(
                    comment.and_then(|c| c.performed_via_github_app.as_ref()),
                )
                .or_else(|| app_id(subject.and_then(|s| s.performed_via_github_app.as_ref()))),
            }
        }
    }
}

/// The facts octocrab's webhook models read from a body (`None` fields where the model has
/// none), or why the model refuses it. The reference [`extract`] is tested against; off the
/// hot path.
pub fn facts_from_model(event: &str, body: &[u8]) -> Result<Facts, String> {
    let typed = WebhookEvent::try_from_header_and_body(event, body).map_err(|e| e.to_string())?;
    let mut facts = Facts {
        event: event.to_string(),
        ..Facts::default()
    };
    facts.installation_id = typed.installation.as_ref().map(|i| match i {
        octocrab::models::webhook_events::EventInstallation::Full(full) => full.id.0,
        octocrab::models::webhook_events::EventInstallation::Minimal(min) => min.id.0,
    });
    if let Some(repo) = &typed.repository {
        facts.repository = repo.full_name.clone();
    }
    if let Some(sender) = &typed.sender {
        facts.sender_login = Some(sender.login.clone());
        facts.sender_type = Some(sender.r#type.clone());
    }
    let assoc = |a: &Option<octocrab::models::AuthorAssociation>| {
        a.as_ref()
            .and_then(|a| serde_json::to_value(a).ok())
            .and_then(|v| v.as_str().map(str::to_string))
    };
    match typed.specific {
        WebhookEventPayload::Issues(p) => {
            facts.action = serde_name(&p.action);
            facts.number = Some(p.issue.number);
            facts.title = Some(p.issue.title.clone());
            facts.body = p.issue.body.clone();
            facts.url = Some(p.issue.html_url.to_string());
            facts.updated_at = Some(p.issue.updated_at.timestamp());
            facts.label = p.label.as_ref().map(|l| l.name.clone());
        }
        WebhookEventPayload::IssueComment(p) => {
            facts.action = serde_name(&p.action);
            facts.number = Some(p.issue.number);
            facts.title = Some(p.issue.title.clone());
            facts.body = p.issue.body.clone();
            facts.url = Some(p.issue.html_url.to_string());
            facts.updated_at = Some(p.issue.updated_at.timestamp());
            facts.comment_id = Some(p.comment.id.0);
            facts.comment_body = p.comment.body.clone();
            facts.author_association = assoc(&p.comment.author_association);
        }
        WebhookEventPayload::PullRequestReviewComment(p) => {
            facts.action = serde_name(&p.action);
            facts.number = Some(p.pull_request.number);
            facts.title = p.pull_request.title.clone();
            facts.body = p.pull_request.body.clone();
            facts.url = p.pull_request.html_url.as_ref().map(|u| u.to_string());
            facts.updated_at = p.pull_request.updated_at.map(|t| t.timestamp());
            facts.comment_id = Some(p.comment.id.0);
            facts.comment_body = Some(p.comment.body.clone());
        }
        _ => {}
    }
    Ok(facts)
}

/// The string a unit enum variant serializes to (octocrab's action enums are snake_case).
fn serde_name<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Why a payload lacks a field the rules need, in octocrab's words when its model refuses the
/// body too (cold path: only for deliveries about to be ignored).
pub fn explain_missing(facts: &Facts, body: &[u8]) -> String {
    match facts_from_model(&facts.event, body) {
        Err(e) => format!(" (octocrab's model does not parse it either: {e})"),
        Ok(_) => String::new(),
    }
}

/// Seconds since the epoch of an RFC 3339 UTC time like `2019-05-15T15:20:18Z`.
pub fn epoch_seconds(at: &str) -> Option<i64> {
    let t = at.strip_suffix('Z')?;
    let (date, time) = t.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut h = time.split(':');
    let hh: i64 = h.next()?.parse().ok()?;
    let mm: i64 = h.next()?.parse().ok()?;
    let ss: f64 = h.next()?.parse().ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    Some(days * 86400 + hh * 3600 + mm * 60 + ss as i64)
}

/// Applies the rules. `agent_exists` says whether an agent type is configured.
pub fn decide(
    rules: &Rules,
    app: &AppIdentity,
    facts: &Facts,
    delivery_id: &str,
    agent_exists: &dyn Fn(&str) -> bool,
) -> Decision {
    if let Some(reason) = from_own_app(app, facts) {
        return Decision::Ignore(reason);
    }
    let missing = |what: &str| {
        Decision::Missing(format!(
            "{} {} payload has no {what}",
            facts.event, facts.action
        ))
    };
    let Some(repository) = facts.repository.clone() else {
        return missing("repository.full_name");
    };
    let Some(number) = facts.number else {
        return missing("issue number");
    };
    match (facts.event.as_str(), facts.action.as_str()) {
        ("issues", "labeled" | "unlabeled") => {
            let Some(label) = &facts.label else {
                return missing("label.name");
            };
            let agent_type = match label_agent(rules, label) {
                Some(t) => t,
                None => {
                    return Decision::Ignore(format!(
                        "label `{label}` is not a trigger label (`{}<type>`)",
                        rules.label_prefix
                    ))
                }
            };
            if !agent_exists(&agent_type) {
                return Decision::Ignore(format!(
                    "label `{label}` names agent type `{agent_type}`, which does not exist"
                ));
            }
            if facts.action == "unlabeled" {
                return Decision::Cancel {
                    repository,
                    number,
                    agent_type,
                };
            }
            let key = match (rules.debounce_seconds, facts.updated_at) {
                (w, Some(at)) if w > 0 => format!(
                    "gh:{repository}#{number}:{agent_type}:w{}",
                    at.div_euclid(w as i64)
                ),
                _ => format!("gh:{repository}#{number}:{agent_type}:d{delivery_id}"),
            };
            let trigger = json!({"event": "issues", "action": "labeled", "label": label, "delivery": delivery_id});
            Decision::Submit(build(
                rules, facts, repository, number, agent_type, key, trigger,
            ))
        }
        ("issue_comment", "created") => {
            let text = facts.comment_body.as_deref().unwrap_or("");
            let Some((agent_type, rest)) = parse_command(&rules.command, text) else {
                return Decision::Ignore(format!(
                    "comment is not a `{} <type>` command",
                    rules.command
                ));
            };
            let assoc = facts.author_association.as_deref().unwrap_or("NONE");
            if !rules
                .allowed_associations
                .iter()
                .any(|a| a.eq_ignore_ascii_case(assoc))
            {
                return Decision::Ignore(format!(
                    "comment author's association `{assoc}` may not trigger agents"
                ));
            }
            if !agent_exists(&agent_type) {
                return Decision::Ignore(format!(
                    "`{} {agent_type}`: agent type `{agent_type}` does not exist",
                    rules.command
                ));
            }
            let Some(comment_id) = facts.comment_id else {
                return missing("comment.id");
            };
            let key = format!("gh:{repository}#{number}:{agent_type}:c{comment_id}");
            let trigger = json!({"event": "issue_comment", "action": "created", "command": text, "text": rest, "comment_id": comment_id, "delivery": delivery_id});
            Decision::Submit(build(
                rules, facts, repository, number, agent_type, key, trigger,
            ))
        }
        ("pull_request_review_comment", "created") => {
            let Some(agent_type) = rules.review_comment_agent.clone() else {
                return Decision::Ignore(
                    "no reviewer agent type is configured for pull_request_review_comment".into(),
                );
            };
            if !agent_exists(&agent_type) {
                return Decision::Ignore(format!(
                    "review_comment_agent `{agent_type}` does not exist"
                ));
            }
            let Some(comment_id) = facts.comment_id else {
                return missing("comment.id");
            };
            let key = format!("gh:{repository}#{number}:{agent_type}:rc{comment_id}");
            let trigger = json!({"event": "pull_request_review_comment", "action": "created", "comment": facts.comment_body, "comment_id": comment_id, "delivery": delivery_id});
            Decision::Submit(build(
                rules, facts, repository, number, agent_type, key, trigger,
            ))
        }
        (event, action) => Decision::Ignore(format!("no rule for `{event}` `{action}`")),
    }
}

fn from_own_app(app: &AppIdentity, facts: &Facts) -> Option<String> {
    if let (Some(ours), Some(via)) = (app.app_id, facts.performed_via_app_id) {
        if ours == via {
            return Some(format!(
                "performed via this GitHub App (id {ours}): no self-triggering"
            ));
        }
    }
    if facts.sender_type.as_deref() == Some("Bot") {
        if let (Some(ours), Some(sender)) = (&app.bot_login, &facts.sender_login) {
            if ours.eq_ignore_ascii_case(sender) {
                return Some(format!(
                    "sent by this app's bot `{sender}`: no self-triggering"
                ));
            }
        }
    }
    None
}

fn label_agent(rules: &Rules, label: &str) -> Option<String> {
    if let Some(t) = rules.labels.get(label) {
        return Some(t.clone());
    }
    label
        .strip_prefix(rules.label_prefix.as_str())
        .filter(|t| !t.is_empty() && !rules.label_prefix.is_empty())
        .map(str::to_string)
}

/// `/agent coder fix the tests` → (`coder`, `fix the tests`).
pub fn parse_command(command: &str, text: &str) -> Option<(String, String)> {
    let first = text.trim_start().lines().next()?;
    let rest = first.strip_prefix(command)?;
    if !rest.starts_with(char::is_whitespace) {
        return None;
    }
    let mut words = rest.trim().splitn(2, char::is_whitespace);
    let agent_type = words.next().filter(|t| !t.is_empty())?.to_string();
    let extra = words.next().unwrap_or("").trim().to_string();
    Some((agent_type, extra))
}

fn build(
    rules: &Rules,
    facts: &Facts,
    repository: String,
    number: u64,
    agent_type: String,
    idempotency_key: String,
    trigger: Value,
) -> Trigger {
    let payload = json!({
        "source": "github",
        "repository": repository,
        "issue": number,
        "title": facts.title,
        "body": facts.body,
        "url": facts.url,
        "sender": facts.sender_login,
        "installation_id": facts.installation_id,
        "trigger": trigger,
    });
    Trigger {
        agent_type,
        repository,
        number,
        installation_id: facts.installation_id,
        payload,
        idempotency_key: truncate_key(idempotency_key),
        priority: rules.priority,
    }
}

/// Idempotency keys are at most 256 characters: long ones keep a hash of the whole key.
fn truncate_key(key: String) -> String {
    if key.len() <= 256 {
        return key;
    }
    use sha2::{Digest, Sha256};
    let digest = hex::encode(Sha256::digest(key.as_bytes()));
    let mut cut = 190;
    while !key.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}~{digest}", &key[..cut])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn view_reads_escaped_strings_and_falls_back_on_unexpected_types() {
        let body = br#"{"action":"labeled","issue":{"number":7,"title":"say \"hi\"\n","updated_at":"2019-05-15T15:20:18Z"},
            "label":{"name":"agent:coder"},"repository":{"full_name":"o/r"},"installation":{"id":9},
            "sender":{"login":"u","type":"User"}}"#;
        let facts = extract("issues", body).unwrap();
        assert_eq!(facts.title.as_deref(), Some("say \"hi\"\n"));
        assert_eq!(facts.number, Some(7));
        assert_eq!(facts.installation_id, Some(9));
        assert_eq!(facts.updated_at, Some(1557933618));
        // `number` as a string: the view refuses the body, the field-by-field reading keeps
        // everything else.
        let odd = br#"{"action":"labeled","issue":{"number":"7","title":"t"},"label":{"name":"agent:coder"},"repository":{"full_name":"o/r"}}"#;
        let facts = extract("issues", odd).unwrap();
        assert_eq!(facts.number, None);
        assert_eq!(facts.label.as_deref(), Some("agent:coder"));
        assert_eq!(facts.repository.as_deref(), Some("o/r"));
        assert!(extract("issues", b"[1]")
            .unwrap_err()
            .contains("not a JSON object"));
        assert!(extract("issues", b"{")
            .unwrap_err()
            .contains("not valid JSON"));
    }

    fn labeled(label: &str) -> Facts {
        Facts {
            event: "issues".into(),
            action: "labeled".into(),
            repository: Some("o/r".into()),
            number: Some(7),
            label: Some(label.into()),
            updated_at: Some(1_000_005),
            sender_login: Some("alice".into()),
            sender_type: Some("User".into()),
            ..Default::default()
        }
    }

    fn exists(t: &str) -> bool {
        t == "coder"
    }

    #[test]
    fn label_rules_and_debounce() {
        let rules = Rules::default();
        let app = AppIdentity::default();
        let Decision::Submit(a) = decide(&rules, &app, &labeled("agent:coder"), "d1", &exists)
        else {
            panic!()
        };
        let mut later = labeled("agent:coder");
        later.updated_at = Some(1_000_008);
        let Decision::Submit(b) = decide(&rules, &app, &later, "d2", &exists) else {
            panic!()
        };
        assert_eq!(a.idempotency_key, b.idempotency_key, "one window, one task");
        assert_eq!(a.payload["issue"], 7);
        assert!(matches!(
            decide(&rules, &app, &labeled("agent:nope"), "d", &exists),
            Decision::Ignore(r) if r.contains("does not exist")
        ));
        assert!(matches!(
            decide(&rules, &app, &labeled("bug"), "d", &exists),
            Decision::Ignore(r) if r.contains("not a trigger label")
        ));
        let mut un = labeled("agent:coder");
        un.action = "unlabeled".into();
        assert!(matches!(
            decide(&rules, &app, &un, "d", &exists),
            Decision::Cancel { .. }
        ));
    }

    #[test]
    fn own_bot_never_triggers() {
        let app = AppIdentity {
            app_id: Some(42),
            bot_login: Some("orch[bot]".into()),
        };
        let mut f = labeled("agent:coder");
        f.sender_type = Some("Bot".into());
        f.sender_login = Some("orch[bot]".into());
        assert!(matches!(
            decide(&Rules::default(), &app, &f, "d", &exists),
            Decision::Ignore(r) if r.contains("self")
        ));
        let mut g = labeled("agent:coder");
        g.performed_via_app_id = Some(42);
        assert!(matches!(
            decide(&Rules::default(), &app, &g, "d", &exists),
            Decision::Ignore(r) if r.contains("self")
        ));
    }

    #[test]
    fn timestamps() {
        assert_eq!(epoch_seconds("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(epoch_seconds("2019-05-15T15:20:18Z"), Some(1_557_933_618));
        assert_eq!(epoch_seconds("2019-05-15"), None);
    }

    #[test]
    fn commands() {
        assert_eq!(
            parse_command("/agent", "/agent coder fix it\nmore"),
            Some(("coder".into(), "fix it".into()))
        );
        assert_eq!(parse_command("/agent", "/agentcoder"), None);
        assert_eq!(parse_command("/agent", "/agent "), None);
        assert_eq!(parse_command("/agent", "please /agent coder"), None);
        let long = truncate_key("k".repeat(400));
        assert!(long.len() <= 256);
    }
}
