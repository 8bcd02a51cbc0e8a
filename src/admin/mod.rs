//! Admin commands for people without the mirrord CLI: `mirrord-operator status` prints what
//! `mirrord operator status` prints (operator-api.md §6.3): version, license, statistics, sessions.
//!
//! The request goes through kube-apiserver with the caller's kubeconfig, like the mirrord CLI's, so
//! the same RBAC applies (`get` on `mirrordoperators`).

use std::fmt::Write as _;

use serde_json::Value;

use crate::coordinator::api::objects::OPERATOR_NAME;

pub mod probe;

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// kubeconfig context to use (default: the current context).
    #[arg(long, env = "MIRRORD_OPERATOR_CONTEXT")]
    pub context: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("reading the kubeconfig: {0}")]
    Config(#[from] kube::config::KubeconfigError),
    #[error("building the Kubernetes client: {0}")]
    Client(kube::Error),
    #[error(
        "mirrord operator was not found in the cluster (GET /apis/operator.metalbear.co/v1/mirrordoperators/{OPERATOR_NAME} answered 404; is the coordinator installed and its APIService Available?)"
    )]
    NotInstalled,
    #[error("the operator refused the request: {0}")]
    Api(kube::Error),
    #[error("cannot reach the cluster's API server: {0}")]
    Unreachable(kube::Error),
    #[error("the operator answered an object this command cannot read: {0}")]
    Shape(String),
}

impl AdminError {
    /// Label for logs.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Config(_) => "config",
            Self::Client(_) => "client",
            Self::NotInstalled => "not_installed",
            Self::Api(_) => "api",
            Self::Unreachable(_) => "unreachable",
            Self::Shape(_) => "shape",
        }
    }
}

/// `mirrord-operator status`.
pub async fn status(args: StatusArgs) -> Result<(), AdminError> {
    let client = kube_client(args.context).await?;
    print!("{}", fetch_status(&client).await?);
    Ok(())
}

/// A client from the caller's kubeconfig (`context` or the current one).
pub async fn kube_client(context: Option<String>) -> Result<kube::Client, AdminError> {
    let options = kube::config::KubeConfigOptions {
        context,
        ..Default::default()
    };
    let config = match kube::Config::from_kubeconfig(&options).await {
        Ok(config) => config,
        // In a pod without a kubeconfig: the in-cluster service account.
        Err(error) => kube::Config::incluster().map_err(|_| AdminError::Config(error))?,
    };
    kube::Client::try_from(config).map_err(AdminError::Client)
}

/// GETs the operator object and renders it.
pub async fn fetch_status(client: &kube::Client) -> Result<String, AdminError> {
    let request = http::Request::get(format!(
        "/apis/operator.metalbear.co/v1/mirrordoperators/{OPERATOR_NAME}"
    ))
    .body(Vec::new())
    .map_err(|e| AdminError::Shape(e.to_string()))?;
    let operator: Value = client
        .request(request)
        .await
        .map_err(|error| match &error {
            kube::Error::Api(status) if status.code == 404 => AdminError::NotInstalled,
            kube::Error::Api(_) => AdminError::Api(error),
            _ => AdminError::Unreachable(error),
        })?;
    render_status(&operator)
}

fn text<'a>(doc: &'a Value, pointer: &str) -> Result<&'a str, AdminError> {
    doc.pointer(pointer)
        .and_then(Value::as_str)
        .ok_or_else(|| AdminError::Shape(format!("{pointer} is missing or not a string")))
}

/// ` 1-Jan-2030`, the CLI's `%e-%b-%Y`.
fn display_date(date: &str) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let parts: Vec<&str> = date.split('-').collect();
    match parts.as_slice() {
        [year, month, day] => match (month.parse::<usize>(), day.parse::<u8>()) {
            (Ok(m @ 1..=12), Ok(d)) => format!("{d:>2}-{}-{year}", MONTHS[m - 1]),
            _ => date.to_owned(),
        },
        _ => date.to_owned(),
    }
}

/// Renders the `MirrordOperator` object the way `mirrord operator status` does (pure).
pub fn render_status(operator: &Value) -> Result<String, AdminError> {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Operator version: {}",
        text(operator, "/spec/operator_version")?
    );
    let _ = writeln!(
        out,
        "Operator default namespace: {}",
        text(operator, "/spec/default_namespace")?
    );
    let _ = writeln!(out, "Operator License");
    let _ = writeln!(out, "    name: {}", text(operator, "/spec/license/name")?);
    let _ = writeln!(
        out,
        "    organization: {}",
        text(operator, "/spec/license/organization")?
    );
    let _ = writeln!(
        out,
        "    expire at: {}",
        display_date(text(operator, "/spec/license/expire_at")?)
    );
    let Some(status) = operator.get("status").filter(|s| s.is_object()) else {
        let _ = writeln!(
            out,
            "\nThe operator answered without a status: could not retrieve the operator status."
        );
        return Ok(out);
    };
    if let Some(stats) = status.get("statistics").filter(|s| s.is_object()) {
        let _ = writeln!(out, "\nOperator Daily Users: {}", stats["dau"]);
        let _ = writeln!(out, "Operator Monthly Users: {}", stats["mau"]);
    }
    let sessions = status["sessions"]
        .as_array()
        .ok_or_else(|| AdminError::Shape("status.sessions is missing".into()))?;
    let rows: Vec<Vec<String>> = sessions
        .iter()
        .filter(|s| s["user"] != "preview-env")
        .map(session_row)
        .collect::<Result<_, _>>()?;
    out.push('\n');
    if rows.is_empty() {
        out.push_str("No active sessions.\n");
    } else {
        out.push_str(&table(
            &[
                "Session ID",
                "Target",
                "Namespace",
                "User",
                "Ports",
                "Session Duration",
            ],
            &rows,
        ));
    }
    out.push_str(&queue_tables(sessions));
    Ok(out)
}

/// One table per broker and queue consumer of the sessions' `rmq` / `sqs` objects
/// (`MirrordRMQSession`, `MirrordSQSSession`), laid out like the CLI's SQS tables: which original
/// queue each session splits into which temporary queue, one row per filter entry (`name:regex`,
/// or `jq:<program>`). Entries under `*` apply to every queue id; a key's `::suffix` is not shown.
fn queue_tables(sessions: &[Value]) -> String {
    let mut out = String::new();
    for (key, broker) in [("sqs", "SQS"), ("rmq", "RMQ")] {
        let mut tables: std::collections::BTreeMap<String, Vec<Vec<String>>> = Default::default();
        for session in sessions {
            for object in session[key].as_array().into_iter().flatten() {
                let spec = &object["spec"];
                let consumer = &spec["queueConsumer"];
                let mut title = format!(
                    "{}/{}",
                    consumer["workloadType"]
                        .as_str()
                        .unwrap_or_default()
                        .to_lowercase(),
                    consumer["name"].as_str().unwrap_or_default()
                );
                if let Some(container) = consumer["container"].as_str() {
                    let _ = write!(title, "/container/{container}");
                }
                let status = &object["status"];
                let details = [
                    &status["Ready"],
                    &status["RegisteringFilters"],
                    &status["CleanupError"]["details"],
                ];
                let Some(names) = details.iter().find_map(|d| d["queueNames"].as_object()) else {
                    continue;
                };
                for (id, names) in names {
                    let shown_id = id.split("::").next().unwrap_or(id);
                    for filter in filter_cells(spec, shown_id) {
                        tables.entry(title.clone()).or_default().push(vec![
                            session["id"].as_str().unwrap_or_default().to_owned(),
                            shown_id.to_owned(),
                            session["user"].as_str().unwrap_or_default().to_owned(),
                            names["originalName"]
                                .as_str()
                                .unwrap_or_default()
                                .to_owned(),
                            names["outputName"].as_str().unwrap_or_default().to_owned(),
                            filter,
                        ]);
                    }
                }
            }
        }
        for (consumer, rows) in tables {
            let _ = write!(out, "\n{broker} Queue for {consumer}\n");
            out.push_str(&table(
                &[
                    "Session ID",
                    "Queue ID",
                    "User",
                    "Original Name",
                    "Output Name",
                    "Filter",
                ],
                &rows,
            ));
        }
    }
    out
}

/// The Filter cells of one queue id of a session object's spec: its `queueFilters` entries and
/// those under `*` (`name:regex`), then its `queueJqFilters` (`jq:<program>`); one empty cell
/// when there are none.
fn filter_cells(spec: &Value, queue_id: &str) -> Vec<String> {
    let ids = [queue_id, "*"];
    let mut cells: Vec<String> = ids
        .iter()
        .flat_map(|k| spec["queueFilters"][k].as_object().into_iter().flatten())
        .map(|(name, regex)| format!("{name}:{}", regex.as_str().unwrap_or_default()))
        .collect();
    cells.extend(
        ids.iter()
            .filter_map(|k| spec["queueJqFilters"][k].as_str())
            .map(|jq| format!("jq:{jq}")),
    );
    if cells.is_empty() {
        cells.push(String::new());
    }
    cells
}

fn session_row(session: &Value) -> Result<Vec<String>, AdminError> {
    let duration = session["duration_secs"]
        .as_u64()
        .ok_or_else(|| AdminError::Shape("a session has no duration_secs".into()))?;
    let ports: Vec<String> = session["locked_ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|port| {
            let mut line = format!(
                "Port: {}, Type: {}",
                port["port"],
                port["kind"].as_str().unwrap_or_default()
            );
            if let Some(filter) = port["filter"].as_str() {
                let _ = write!(line, ", Filter: {filter}");
            }
            line
        })
        .collect();
    // The policies in force go under the target they apply to.
    let mut target = text(session, "/target")?.to_owned();
    for policy in session["policies"].as_array().into_iter().flatten() {
        let _ = write!(target, "\npolicy: {}", policy.as_str().unwrap_or_default());
    }
    Ok(vec![
        session["id"].as_str().unwrap_or_default().to_owned(),
        target,
        session["namespace"].as_str().unwrap_or("N/A").to_owned(),
        text(session, "/user")?.to_owned(),
        ports.join("\n"),
        humantime::format_duration(std::time::Duration::from_secs(duration)).to_string(),
    ])
}

/// A plain-text table; a cell may span several lines.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            for line in cell.lines() {
                widths[i] = widths[i].max(line.chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut push_line = |cells: &[&str]| {
        let line: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join(" | ").trim_end());
        out.push('\n');
    };
    push_line(header);
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    let rule: Vec<&str> = rule.iter().map(String::as_str).collect();
    push_line(&rule);
    for row in rows {
        let lines: Vec<Vec<&str>> = row.iter().map(|c| c.lines().collect()).collect();
        let height = lines.iter().map(Vec::len).max().unwrap_or(1).max(1);
        for i in 0..height {
            let cells: Vec<&str> = lines
                .iter()
                .map(|l| l.get(i).copied().unwrap_or(""))
                .collect();
            push_line(&cells);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `render_status` of an operator with this one session.
    fn status_with_session(session: Value) -> String {
        let operator = serde_json::json!({
            "spec": {"operator_version": "1", "default_namespace": "mirrord",
                "license": {"name": "n", "organization": "o", "expire_at": "2099-12-31"}},
            "status": {"sessions": [session]}
        });
        render_status(&operator).unwrap()
    }

    #[test]
    fn rmq_sessions_get_a_table_per_consumer() {
        let text = status_with_session(serde_json::json!({
            "id": "A11CE", "user": "alice", "target": "deployment/web",
            "namespace": "default", "duration_secs": 5, "locked_ports": [],
            "rmq": [{"spec": {"namespace": "default", "sessionId": "a11ce",
                "queueConsumer": {"name": "web", "workloadType": "Deployment"},
                "queueFilters": {"orders": {"tenant": "^alice$"}}},
                "status": {"Ready": {"queueNames": {"orders": {"originalName": "orders",
                    "outputName": "orders-mirrord-a11ce"}}, "envUpdates": {}}}}]}));
        assert!(text.contains("RMQ Queue for deployment/web"), "{text}");
        let row = text
            .lines()
            .find(|l| l.starts_with("A11CE") && l.contains("orders-mirrord-a11ce"))
            .unwrap();
        assert!(
            row.contains("tenant:^alice$") && row.contains("alice"),
            "{row}"
        );
    }

    #[test]
    fn sqs_sessions_get_a_row_per_filter_entry() {
        let text = status_with_session(serde_json::json!({
            "id": "B0B", "user": "bob", "target": "deployment/mail",
            "namespace": "default", "duration_secs": 5, "locked_ports": [],
            "sqs": [{"spec": {"sessionId": "b0b",
                "queueConsumer": {"name": "mail", "container": "main", "workloadType": "Deployment"},
                "queueFilters": {"mail": {"tenant": "^bob$"}, "*": {"kind": "^x$"}},
                "queueJqFilters": {"mail": ".urgent"}},
                "status": {"CleanupError": {"error": {"statusCode": 503, "reason": "r"},
                    "details": {"queueNames": {"mail::1": {"originalName": "mail",
                    "outputName": "mail-mirrord-b0b"}}, "envUpdates": {}}}}}]}));
        assert!(
            text.contains("SQS Queue for deployment/mail/container/main"),
            "{text}"
        );
        let rows: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("B0B") && l.contains("mail-mirrord-b0b"))
            .collect();
        assert_eq!(rows.len(), 3, "{text}");
        for (row, filter) in rows.iter().zip(["tenant:^bob$", "kind:^x$", "jq:.urgent"]) {
            assert!(row.contains(filter), "{row} lacks {filter}");
            assert!(!row.contains("mail::1"), "{row}");
        }
        assert!(!text.contains("RMQ Queue"), "{text}");
    }

    #[test]
    fn dates_print_like_the_cli() {
        assert_eq!(display_date("2030-01-01"), " 1-Jan-2030");
        assert_eq!(display_date("2099-12-31"), "31-Dec-2099");
        assert_eq!(display_date("garbage"), "garbage");
    }

    #[test]
    fn session_policies_show_under_the_target() {
        let session = serde_json::json!({
            "id": "A11CE", "duration_secs": 5, "user": "alice", "target": "deployment/web",
            "namespace": "shop", "locked_ports": [],
            "policies": ["MirrordPolicy shop/filters-only", "MirrordClusterPolicy no-mirror"],
        });
        let row = session_row(&session).unwrap();
        assert_eq!(
            row[1],
            "deployment/web\npolicy: MirrordPolicy shop/filters-only\npolicy: MirrordClusterPolicy no-mirror"
        );
    }

    #[test]
    fn refuses_objects_without_required_fields() {
        assert!(render_status(&serde_json::json!({"spec": {}})).is_err());
    }
}
