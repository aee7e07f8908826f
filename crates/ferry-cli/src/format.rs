//! Human-readable numbers and tables for people; `--json` prints raw numbers instead.

use std::fmt::Write as _;
use std::time::Duration;

use ferry::{Headers, RemovedTask, TaskInfo, TaskKind, hide_url_password, hide_url_passwords};
use serde_json::{Value, json};

/// `512 B`, `1.5 KiB`, `20.0 MiB` (binary units, as `ls -h` and curl use).
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// `1.2 MiB/s`.
pub fn rate(bytes_per_second: u64) -> String {
    format!("{}/s", bytes(bytes_per_second))
}

/// `45s`, `3m07s`, `2h05m`, `3d04h`.
pub fn duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

/// `45%` when the size is known, else the bytes so far.
pub fn progress(done: u64, total: Option<u64>) -> String {
    match total {
        Some(0) => "100%".to_owned(),
        Some(total) => format!("{}%", (done.min(total) * 100) / total),
        None => bytes(done),
    }
}

/// A task's error as shown: `message [code]`, with the passwords of URLs hidden.
pub fn error(error: &ferry::ErrorInfo) -> String {
    format!("{} [{}]", hide_url_passwords(&error.message), error.code)
}

/// Where a task's file is or will be.
pub fn destination(task: &TaskInfo) -> String {
    if task.kind == TaskKind::Upload {
        return format!("→ {}", hide_url_password(&task.url));
    }
    task.location
        .clone()
        .or_else(|| task.destination.clone())
        .unwrap_or_else(|| "(inbox)".to_owned())
}

/// A followed task another client removed: what is known of it.
pub fn removed_json(tombstone: &RemovedTask) -> Value {
    json!({
        "id": tombstone.id,
        "session": tombstone.session,
        "state": tombstone.outcome.name(),
        "removed": true,
    })
}

/// A task for `--json`: stable names, raw numbers, the state as one word.
pub fn task_json(task: &TaskInfo) -> Value {
    json!({
        "id": task.id,
        "session": task.session,
        "url": hide_url_password(&task.url),
        "current_url": task.current_url.as_deref().map(hide_url_password),
        "state": task.state.name(),
        "bytes_done": task.bytes_done,
        "bytes_total": task.bytes_total,
        "bytes_per_second": task.bytes_per_second,
        "kind": task.kind,
        "destination": match task.kind {
            TaskKind::Upload => None,
            TaskKind::Download => task.location.as_ref().or(task.destination.as_ref()),
        },
        // A reply's cookies are secrets: never printed (SPEC §14).
        "reply": task.reply.as_ref().map(|r| json!({
            "status": r.status,
            "headers": r.headers.iter().map(|(k, v)| {
                let shown = if Headers::is_secret(k) { "***" } else { v.as_str() };
                (k.as_str(), shown)
            }).collect::<Vec<_>>(),
            "file": r.location,
            "bytes": r.bytes,
        })),
        "error": task.error.as_ref().map(|e| json!({
            "code": e.code,
            "message": hide_url_passwords(&e.message),
            "transient": e.transient,
            "status": e.status,
        })),
        "tag": task.tag,
        "group": task.group,
        "priority": task.priority,
        "resume_data": task.resume_data,
    })
}

/// Columns padded to their widest cell; the last column is not padded (it may be long).
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table {
            rows: vec![header.iter().map(|h| (*h).to_owned()).collect()],
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(c))
                    .map(|cell| cell.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                if c + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    let _ = write!(line, "{cell:<width$}  ", width = widths[c]);
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_uploads_json_names_its_reply_and_hides_its_cookies() {
        let task: TaskInfo = serde_json::from_value(json!({
            "id": 4, "session": "s", "url": "http://h/up", "current_url": null,
            "destination": null, "location": "/home/r/4.reply",
            "state": "completed", "outcome": "succeeded", "bytes_done": 10, "bytes_total": 10,
            "error": null, "tag": null, "priority": "normal", "kind": "upload",
            "reply": {"status": 201, "location": "/home/r/4.reply", "bytes": 2,
                      "headers": [["set-cookie", "session=s3cret"], ["etag", "\"x\""]]}
        }))
        .unwrap();
        let shown = task_json(&task);
        assert_eq!(shown["kind"], "upload");
        assert_eq!(shown["destination"], Value::Null);
        assert_eq!(shown["reply"]["file"], "/home/r/4.reply");
        assert_eq!(shown["reply"]["headers"][0], json!(["set-cookie", "***"]));
        assert_eq!(shown["reply"]["headers"][1], json!(["etag", "\"x\""]));
        assert!(!shown.to_string().contains("s3cret"));
        assert_eq!(destination(&task), "→ http://h/up");
    }

    #[test]
    fn sizes_rates_and_durations_read_like_people_write_them() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(20 << 20), "20.0 MiB");
        assert_eq!(rate(3 << 30), "3.0 GiB/s");
        assert_eq!(duration(Duration::from_secs(45)), "45s");
        assert_eq!(duration(Duration::from_secs(187)), "3m07s");
        assert_eq!(duration(Duration::from_secs(7500)), "2h05m");
        assert_eq!(duration(Duration::from_secs(3 * 86400 + 4 * 3600)), "3d04h");
        assert_eq!(progress(50, Some(200)), "25%");
        assert_eq!(progress(300, Some(200)), "100%");
        assert_eq!(progress(2048, None), "2.0 KiB");
    }

    #[test]
    fn tables_align_columns_but_not_the_last() {
        let mut t = Table::new(&["ID", "STATE", "ERROR"]);
        t.row(vec!["1".into(), "succeeded".into(), String::new()]);
        t.row(vec!["12".into(), "failed".into(), "HTTP 404".into()]);
        assert_eq!(
            t.render(),
            "ID  STATE      ERROR\n1   succeeded\n12  failed     HTTP 404\n"
        );
    }
}
