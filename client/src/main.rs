//! `cipherpost`: the command-line client. See `client/README.md`.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use cipherpost_client::{Client, ClientError, Event, StoredMessage};
use clap::{Parser, Subcommand};
use serde_json::json;

/// End-to-end encrypted multi-device messaging.
#[derive(Parser)]
#[command(name = "cipherpost", version)]
struct Cli {
    /// The device profile directory (its local store).
    #[arg(long, global = true, env = "CIPHERPOST_HOME")]
    profile: Option<PathBuf>,
    /// The server.
    #[arg(
        long,
        global = true,
        env = "CIPHERPOST_ENDPOINT",
        default_value = "http://127.0.0.1:8787"
    )]
    endpoint: String,
    /// The WebSocket URL (default: the endpoint's host with ws:// and /ws).
    #[arg(long, global = true, env = "CIPHERPOST_WS")]
    ws_url: Option<String>,
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    json: bool,
    /// Do not download received attachments now (they stay fetchable with `fetch`).
    #[arg(long, global = true)]
    no_auto_download: bool,
    /// More log output (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create an account with this profile as its first device.
    Register {
        /// The user id (3 to 32 of a-z 0-9 . _ -).
        user: String,
    },
    /// Link a new device to an account.
    Link {
        #[command(subcommand)]
        action: LinkAction,
    },
    /// List this account's devices.
    Devices,
    /// Send a text or files (stored first, delivered by the outbox).
    Send {
        /// The contact.
        to: String,
        /// The text (with files: their caption; optional).
        text: Option<String>,
        /// A file to attach, encrypted (up to 100 MiB; repeat for several).
        #[arg(long = "file", value_name = "PATH")]
        files: Vec<PathBuf>,
        /// The caption of the files (same as TEXT).
        #[arg(long, conflicts_with = "text")]
        caption: Option<String>,
    },
    /// Download (or retry) the attachments of a received message.
    Fetch {
        /// The message id (hex, as `history --json` shows it).
        message_id: String,
    },
    /// Fetch what is queued for this device and deliver the outbox.
    Sync,
    /// Stay connected and show messages as they arrive.
    Watch {
        /// Stop after this many seconds.
        #[arg(long = "for")]
        seconds: Option<u64>,
    },
    /// Conversations with unread counts.
    Inbox,
    /// A conversation's messages.
    History {
        /// The contact.
        user: String,
        /// How many of the latest messages.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Show a conversation and mark it read (sends read receipts and read-sync).
    Read {
        /// The contact.
        user: String,
    },
    /// Tell a contact you are typing (or stopped).
    Typing {
        /// The contact.
        user: String,
        /// Stopped typing.
        #[arg(long)]
        stop: bool,
    },
    /// Show the safety number with a contact; accept a changed key.
    Verify {
        /// The contact.
        user: String,
        /// Accept the contact's changed account key (after comparing safety numbers).
        #[arg(long)]
        accept: bool,
    },
    /// Show or change settings.
    Settings {
        /// Send read receipts.
        #[arg(long, value_parser = ["on", "off"])]
        read_receipts: Option<String>,
        /// Download received attachments automatically.
        #[arg(long, value_parser = ["on", "off"])]
        auto_download: Option<String>,
    },
}

#[derive(Subcommand)]
enum LinkAction {
    /// On the new device: print a link code (valid 10 minutes).
    Request {
        /// The account to join.
        user: String,
    },
    /// On an existing device: approve a link code.
    Approve {
        /// The code printed by `link request`.
        code: String,
    },
}

fn profile_dir(cli: &Cli) -> Result<PathBuf, ClientError> {
    if let Some(p) = &cli.profile {
        return Ok(p.clone());
    }
    std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".cipherpost"))
        .ok_or_else(|| ClientError::Usage("set --profile DIR or CIPHERPOST_HOME".into()))
}

fn show_event(json: bool, e: &Event) {
    if json {
        println!("{}", serde_json::to_string(e).unwrap_or_default());
        return;
    }
    match e {
        Event::Message {
            conversation,
            from,
            text,
            outgoing,
            ..
        } => {
            if *outgoing {
                println!("[to {conversation}] (from your device {from}) {text}");
            } else {
                println!("[{conversation}] {from}: {text}");
            }
        }
        Event::Receipt { count: 0, .. } | Event::ReadSync { count: 0 } => {}
        Event::Receipt {
            conversation,
            kind,
            count,
        } => {
            println!(
                "[{conversation}] {count} message(s) {}",
                match kind {
                    cipherpost_client::content::ReceiptKind::Delivered => "delivered",
                    cipherpost_client::content::ReceiptKind::Read => "read",
                }
            )
        }
        Event::ReadSync { count } => println!("{count} message(s) read on another of your devices"),
        Event::Typing { from, typing } => {
            println!(
                "{from} {}",
                if *typing {
                    "is typing..."
                } else {
                    "stopped typing"
                }
            )
        }
        Event::Linked { user } => println!("this device is now linked to {user}"),
        Event::Notice { text } => println!("notice: {text}"),
        Event::Attachment {
            conversation,
            message_id,
            attachment: a,
        } => match (&a.path, &a.error) {
            (Some(path), _) => println!("[{conversation}] attachment {} saved to {path}", a.name),
            (None, Some(e)) => println!(
                "[{conversation}] attachment {} FAILED: {e}\n  retry with `cipherpost fetch {message_id}`",
                a.name
            ),
            (None, None) => println!(
                "[{conversation}] attachment {} not downloaded (`cipherpost fetch {message_id}`)",
                a.name
            ),
        },
    }
}

fn show_attachment(a: &cipherpost_client::AttachmentInfo) {
    let place = match (a.state.as_str(), &a.path, &a.error) {
        ("failed", _, Some(e)) => format!("FAILED: {e}"),
        (_, Some(p), _) => p.clone(),
        ("pending", _, _) => "not downloaded".to_string(),
        (s, _, _) => s.to_string(),
    };
    println!(
        "           [file] {} ({}, {} bytes): {place}",
        a.name, a.content_type, a.size
    );
}

fn show_messages(json: bool, msgs: &[StoredMessage]) {
    if json {
        println!("{}", serde_json::to_string(msgs).unwrap_or_default());
        return;
    }
    for m in msgs {
        let who = if m.outgoing {
            "me".to_string()
        } else {
            m.sender_user.clone()
        };
        let s = m.sent_ms / 1000;
        let t = format!("{:02}:{:02}:{:02}", s / 3600 % 24, s / 60 % 60, s % 60);
        println!("{t} UTC  {who}: {}  ({})", m.text, m.state);
        for a in &m.attachments {
            show_attachment(a);
        }
        if m.attachments
            .iter()
            .any(|a| a.state == "pending" || a.state == "failed")
            && !m.outgoing
        {
            println!("           fetch with `cipherpost fetch {}`", m.message_id);
        }
    }
}

async fn run(cli: Cli) -> Result<(), ClientError> {
    let dir = profile_dir(&cli)?;
    let mut c = Client::open(&dir, &cli.endpoint, cli.ws_url.as_deref())?;
    let j = cli.json;
    // Progress bars only on a terminal (indicatif checks stderr) and never with --json.
    c.set_progress(!j);
    c.set_no_auto_download(cli.no_auto_download);
    match cli.command {
        Command::Register { user } => {
            let (user, device) = c.register(&user).await?;
            if j {
                println!("{}", json!({"user": user, "device_id": device}));
            } else {
                println!("registered {user}, this is device {device}");
            }
        }
        Command::Link {
            action: LinkAction::Request { user },
        } => {
            let code = c.link_request(&user)?;
            if j {
                println!("{}", json!({"code": code}));
            } else {
                println!("On a device of {user}, run within 10 minutes:\n  cipherpost link approve {code}\nthen run `cipherpost sync` here.");
            }
        }
        Command::Link {
            action: LinkAction::Approve { code },
        } => {
            let device = c.link_approve(&code).await?;
            if j {
                println!("{}", json!({"device_id": device}));
            } else {
                println!("device {device} linked; it receives the account key and contacts on its next sync");
            }
        }
        Command::Devices => {
            let devices = c.devices().await?;
            if j {
                let v: Vec<_> = devices
                    .iter()
                    .map(|(d, me)| json!({"device_id": d, "this_device": me}))
                    .collect();
                println!("{}", serde_json::Value::Array(v));
            } else {
                for (d, me) in devices {
                    println!("{d}{}", if me { "  (this device)" } else { "" });
                }
            }
        }
        Command::Send {
            to,
            text,
            files,
            caption,
        } => {
            let text = text.or(caption);
            let id = match (text, files.is_empty()) {
                (Some(text), true) => c.queue_text(&to, &text)?,
                (None, true) => {
                    return Err(ClientError::Usage(
                        "give a text, or one or more --file PATH".into(),
                    ))
                }
                (text, false) => c.queue_files(&to, text.as_deref().unwrap_or(""), &files)?,
            };
            let delivered = match c.flush_outbox().await {
                Ok(_) => c.store().outbox_len()? == 0,
                Err(ClientError::Unreachable { .. }) => false,
                Err(e) => return Err(e),
            };
            for e in c.take_notices()? {
                show_event(j, &e);
            }
            let attachments = c.attachments_of(&id)?;
            if j {
                println!(
                    "{}",
                    json!({"message_id": id, "sent": delivered, "attachments": attachments})
                );
            } else if delivered {
                println!("sent");
            } else {
                println!(
                    "queued; it will be sent when the server is reachable (`cipherpost sync`)"
                );
            }
        }
        Command::Sync => {
            let events = c.sync().await?;
            for e in &events {
                show_event(j, e);
            }
            if !j && events.is_empty() {
                println!("up to date");
            }
        }
        Command::Watch { seconds } => {
            c.watch(seconds.map(Duration::from_secs), |e| show_event(j, e))
                .await?;
        }
        Command::Inbox => {
            let inbox = c.store().inbox()?;
            if j {
                let v: Vec<_> = inbox
                    .iter()
                    .map(|(u, n, t)| json!({"conversation": u, "unread": n, "last": t}))
                    .collect();
                println!("{}", serde_json::Value::Array(v));
            } else {
                for e in c.take_notices()? {
                    show_event(false, &e);
                }
                if inbox.is_empty() {
                    println!("no conversations");
                }
                for (u, n, t) in inbox {
                    println!("{u:<20} {n:>3} unread   {t}");
                }
            }
        }
        Command::History { user, limit } => show_messages(j, &c.store().history(&user, limit)?),
        Command::Read { user } => show_messages(j, &c.read(&user).await?),
        Command::Typing { user, stop } => {
            c.send_typing(&user, !stop).await?;
            if !j {
                println!("{}", if stop { "stopped typing" } else { "typing" });
            }
        }
        Command::Verify { user, accept } => {
            let v = c.verify(&user, accept).await?;
            if j {
                println!("{}", serde_json::to_string(&v).unwrap_or_default());
            } else {
                println!("safety number with {}:\n  {}", v.user, v.safety_number);
                if let Some(n) = &v.changed_safety_number {
                    println!("{}'s account key CHANGED; new safety number:\n  {n}\ncompare it with {} in person, then run `cipherpost verify {} --accept`", v.user, v.user, v.user);
                }
                if accept && !v.blocked {
                    println!("accepted; sending to {} is allowed", v.user);
                }
            }
            if v.blocked {
                return Err(ClientError::KeyChanged(v.user));
            }
        }
        Command::Fetch { message_id } => {
            let result = c.fetch(&message_id).await;
            for e in c.take_notices()? {
                show_event(j, &e);
            }
            let got = result?;
            if j {
                println!("{}", json!({"message_id": message_id, "attachments": got}));
            } else {
                for a in &got {
                    show_attachment(a);
                }
            }
        }
        Command::Settings {
            read_receipts,
            auto_download,
        } => {
            if let Some(r) = read_receipts {
                c.set_read_receipts(r == "on")?;
            }
            if let Some(a) = auto_download {
                c.set_auto_download(a == "on")?;
            }
            let on = c.read_receipts()?;
            let auto = c.auto_download()?;
            let word = |b: bool| if b { "on" } else { "off" };
            if j {
                println!("{}", json!({"read_receipts": on, "auto_download": auto}));
            } else {
                println!("read receipts: {}", word(on));
                println!("auto download: {}", word(auto));
            }
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("CIPHERPOST_LOG").unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new(format!("cipherpost_client={level}"))
        });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let json = cli.json;
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if json {
                eprintln!(
                    "{}",
                    json!({"error": e.to_string(), "exit_code": e.exit_code()})
                );
            } else {
                eprintln!("cipherpost: {e}");
            }
            ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(1))
        }
    }
}
