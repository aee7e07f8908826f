//! `ferry put` and `ferry post-form`: hand an upload to the daemon, then watch it until it
//! finishes, as `ferry get` does for downloads.
//!
//! The daemon keeps the server's reply in its inbox; `-o FILE` copies it out when the upload
//! has finished (also the body of a 4xx/5xx answer), `-o -` prints it.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use ferry::{TaskInfo, UploadBuilder, UploadMethod};

use crate::client::{self, PriorityArg, usage};
use crate::follow::Style;
use crate::get::{self, Watched};

/// Options shared by `put` and `post-form`.
#[derive(Debug, Args)]
pub struct UploadOptions {
    /// Write the server's reply body to FILE when the upload has finished, also when the
    /// server refused it ('-': stdout, and no progress display).
    #[arg(short = 'o', long = "reply", value_name = "FILE")]
    reply: Option<PathBuf>,
    #[command(flatten)]
    session: client::SessionArg,
    /// Put the upload in this group (see `ferry group`).
    #[arg(long, value_name = "NAME")]
    group: Option<String>,
    /// Priority class; a higher one may pause lower ones while it runs.
    #[arg(long, value_enum)]
    priority: Option<PriorityArg>,
    /// Bandwidth limit, e.g. 500K or 20M (bytes per second).
    #[arg(long, value_name = "RATE", value_parser = client::parse_rate)]
    limit: Option<u64>,
    /// Extra request header (repeatable; not sent to other origins after a redirect).
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE", value_parser = client::parse_header)]
    headers: Vec<(String, String)>,
    /// Print the new task id and return at once.
    #[arg(long, conflicts_with = "reply")]
    detach: bool,
    /// Print the task as JSON (the id with --detach; the final state, with the reply's
    /// status, headers and file, otherwise).
    #[arg(long)]
    json: bool,
    /// No progress display; only a line when the upload has finished.
    #[arg(short, long)]
    quiet: bool,
}

/// Options of `ferry put`.
#[derive(Debug, Args)]
pub struct PutArgs {
    /// The file to send.
    file: PathBuf,
    /// Where to send it (http or https).
    url: String,
    /// The HTTP method.
    #[arg(
        short = 'X',
        long,
        value_enum,
        default_value = "put",
        ignore_case = true
    )]
    method: MethodArg,
    #[command(flatten)]
    options: UploadOptions,
}

/// Options of `ferry post-form`.
#[derive(Debug, Args)]
pub struct PostFormArgs {
    /// Where to send the form (http or https).
    url: String,
    /// A form field: `name=value`, or `name=@PATH` for a file, optionally followed by
    /// `;type=MIME` and `;filename=NAME` (as curl's -F). Repeatable; sent in order.
    #[arg(short = 'F', long = "form", value_name = "NAME=VALUE|NAME=@PATH", required = true, value_parser = parse_form)]
    form: Vec<FormPart>,
    #[command(flatten)]
    options: UploadOptions,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum MethodArg {
    Put,
    Post,
}

/// One `-F` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FormPart {
    /// `name=value`.
    Field { name: String, value: String },
    /// `name=@path;type=…;filename=…`.
    File {
        name: String,
        path: PathBuf,
        content_type: Option<String>,
        file_name: Option<String>,
    },
}

/// Parses `-F name=value` and `-F name=@path[;type=MIME][;filename=NAME]`.
pub fn parse_form(arg: &str) -> Result<FormPart, String> {
    let (name, value) = arg
        .split_once('=')
        .ok_or_else(|| format!("{arg:?} is not NAME=VALUE or NAME=@PATH"))?;
    if name.is_empty() {
        return Err(format!("{arg:?} has no field name before '='"));
    }
    let Some(file) = value.strip_prefix('@') else {
        return Ok(FormPart::Field {
            name: name.to_owned(),
            value: value.to_owned(),
        });
    };
    let mut pieces = file.split(';');
    let path = pieces.next().unwrap_or_default();
    if path.is_empty() {
        return Err(format!("{arg:?} names no file after '@'"));
    }
    let (mut content_type, mut file_name) = (None, None);
    for piece in pieces {
        match piece.split_once('=') {
            Some(("type", v)) if !v.is_empty() => content_type = Some(v.to_owned()),
            Some(("filename", v)) if !v.is_empty() => file_name = Some(v.to_owned()),
            _ => {
                return Err(format!(
                    "{arg:?}: unknown option {piece:?} (expected type=MIME or filename=NAME)"
                ));
            }
        }
    }
    Ok(FormPart::File {
        name: name.to_owned(),
        path: PathBuf::from(path),
        content_type,
        file_name,
    })
}

pub async fn put(args: PutArgs) -> Result<ExitCode> {
    let method = match args.method {
        MethodArg::Put => UploadMethod::Put,
        MethodArg::Post => UploadMethod::Post,
    };
    readable(&args.file)?;
    let session = client::session_for_new_tasks(&args.options.session.session).await?;
    let upload = session.upload(&args.file, &args.url).method(method);
    run(upload, &args.options).await
}

pub async fn post_form(args: PostFormArgs) -> Result<ExitCode> {
    for part in &args.form {
        if let FormPart::File { path, .. } = part {
            readable(path)?;
        }
    }
    let session = client::session_for_new_tasks(&args.options.session.session).await?;
    let mut form = session.multipart(&args.url);
    for part in args.form {
        form = match part {
            FormPart::Field { name, value } => form.field(name, value),
            FormPart::File {
                name,
                path,
                content_type,
                file_name,
            } => form.file_with(name, path, file_name, content_type),
        };
    }
    run(form, &args.options).await
}

async fn run(mut upload: UploadBuilder, options: &UploadOptions) -> Result<ExitCode> {
    let reply_to_stdout = options.reply.as_deref() == Some(std::path::Path::new("-"));
    if reply_to_stdout && options.json {
        return usage("-o - prints the reply on stdout, where --json would print the task");
    }
    if let Some(group) = &options.group {
        upload = upload.group(group.clone());
    }
    if let Some(priority) = options.priority {
        upload = upload.priority(priority.into());
    }
    if let Some(limit) = options.limit {
        upload = upload.rate_limit(limit);
    }
    for (name, value) in &options.headers {
        upload = upload.header(name.clone(), value.clone());
    }
    let task = upload.start().await?;
    let session = &options.session.session;
    if options.detach {
        let text = if options.json {
            format!("[{}]\n", task.id())
        } else {
            format!("{}\n", task.id())
        };
        client::print(&text)?;
        return Ok(ExitCode::SUCCESS);
    }
    // With the reply on stdout, stdout holds nothing else.
    let style = match reply_to_stdout {
        true => Style::Silent,
        false => Style::of(options.json, options.quiet),
    };
    match get::watch(vec![task.id()], style).await? {
        Watched::Completed(done) => {
            if let Some(dest) = &options.reply {
                // Removed by another client before its end was seen: the reply went with it.
                let Some(task) = done.tasks.first() else {
                    anyhow::bail!(
                        "task {} was removed before its reply could be copied to {}",
                        task.id(),
                        dest.display()
                    );
                };
                copy_reply(task, dest)?;
            }
            get::report(&done, options.json)
        }
        Watched::Interrupted => Ok(get::interrupted(&[task.id()], session)),
    }
}

/// A source file that cannot be read is bad input (exit 2), said before the daemon is
/// involved; the daemon checks again when it creates the task.
fn readable(path: &std::path::Path) -> Result<()> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => Ok(()),
        Ok(_) => usage(format!("{} is not a regular file", path.display())),
        Err(e) => usage(format!("cannot read {}: {e}", path.display())),
    }
}

/// Copies the reply of a finished upload to `dest` (`-`: stdout).
fn copy_reply(task: &TaskInfo, dest: &std::path::Path) -> Result<()> {
    let Some(reply) = &task.reply else {
        // No answer came (a connection error, a changed file): nothing to write, and the
        // task's line says why.
        return Ok(());
    };
    let body = std::fs::read(&reply.location)
        .with_context(|| format!("cannot read the reply of task {}", task.id))?;
    if dest == std::path::Path::new("-") {
        let mut out = std::io::stdout().lock();
        out.write_all(&body)
            .and_then(|()| out.flush())
            .context("while printing the reply")
    } else {
        std::fs::write(dest, &body).with_context(|| format!("cannot write {}", dest.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_arguments_parse_like_curls() {
        assert_eq!(
            parse_form("title=a=b").unwrap(),
            FormPart::Field {
                name: "title".into(),
                value: "a=b".into()
            }
        );
        assert_eq!(
            parse_form("doc=@dir/r.pdf;type=application/pdf;filename=report.pdf").unwrap(),
            FormPart::File {
                name: "doc".into(),
                path: "dir/r.pdf".into(),
                content_type: Some("application/pdf".into()),
                file_name: Some("report.pdf".into()),
            }
        );
        assert!(parse_form("novalue").unwrap_err().contains("NAME=VALUE"));
        assert!(parse_form("=x").unwrap_err().contains("no field name"));
        assert!(parse_form("f=@").unwrap_err().contains("no file"));
        assert!(parse_form("f=@x;size=3").unwrap_err().contains("size=3"));
    }
}
