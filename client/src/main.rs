//! `cipherpost`: the command-line client. See `client/README.md`.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use cipherpost_client::{Client, ClientError, Event, GroupInfo, StoredMessage};
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
    /// List this account's devices, or revoke one (`devices revoke ID`).
    Devices {
        #[command(subcommand)]
        action: Option<DevicesAction>,
    },
    /// Send a text (stored first, delivered by the outbox): `send TO TEXT`, or
    /// `send --group GROUP TEXT`.
    Send {
        /// Send to this group (name or id) instead of a contact.
        #[arg(long)]
        group: Option<String>,
        /// The contact and the text (optional with files), or only the text with --group.
        #[arg(value_name = "TO TEXT", num_args = 1..=2, required = true)]
        args: Vec<String>,
        /// A file to attach, encrypted (up to 100 MiB; repeat for several).
        #[arg(long = "file", value_name = "PATH")]
        files: Vec<PathBuf>,
        /// The caption of the files (same as TEXT).
        #[arg(long)]
        caption: Option<String>,
    },
    /// Download (or retry) the attachments of a received message.
    Fetch {
        /// The message id (hex, as `history --json` shows it).
        message_id: String,
    },
    /// Group chats: create, add, remove, promote, demote, leave, info, list, rename.
    Group {
        #[command(subcommand)]
        action: GroupAction,
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
    /// A conversation's messages (a contact's, or a group's with --group).
    History {
        /// The contact.
        #[arg(required_unless_present = "group")]
        user: Option<String>,
        /// A group (name or id) instead of a contact.
        #[arg(long, conflicts_with = "user")]
        group: Option<String>,
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
enum GroupAction {
    /// Create a group with you as its admin.
    Create {
        /// Its name (travels end-to-end encrypted; the server never sees it).
        name: String,
        /// The other members, comma-separated.
        #[arg(long, value_delimiter = ',')]
        members: Vec<String>,
    },
    /// Add members (admins only).
    Add {
        /// The group (name or id).
        group: String,
        /// The accounts to add, comma-separated or one per argument.
        #[arg(required = true, value_delimiter = ',')]
        users: Vec<String>,
    },
    /// Remove a member (admins only); every remaining member starts a new sender key.
    Remove {
        /// The group (name or id).
        group: String,
        /// The member.
        user: String,
    },
    /// Make a member an admin (admins only).
    Promote {
        /// The group (name or id).
        group: String,
        /// The member.
        user: String,
    },
    /// Make an admin a plain member (admins only).
    Demote {
        /// The group (name or id).
        group: String,
        /// The admin.
        user: String,
    },
    /// Leave the group; the last admin names a successor.
    Leave {
        /// The group (name or id).
        group: String,
        /// The member who becomes admin.
        #[arg(long)]
        successor: Option<String>,
    },
    /// Show the group's members and admins (as the server has them now).
    Info {
        /// The group (name or id).
        group: String,
    },
    /// Every group this device knows.
    List,
    /// Rename the group for every member.
    Rename {
        /// The group (name or id).
        group: String,
        /// The new name.
        name: String,
    },
}

#[derive(Subcommand)]
enum DevicesAction {
    /// List this account's devices (the default).
    List,
    /// Revoke a lost or stolen device (from any other device of the account): the account key
    /// is rotated and handed to the remaining devices; contacts see a new safety number.
    Revoke {
        /// The device id (see `cipherpost devices`).
        id: u32,
    },
}

#[derive(Subcommand)]
enum LinkAction {
    /// On the new device: print a link code (valid 10 minutes).
    Request {
        /// The account to join.
        user: String,
    },
    /// On an existing device: approve a link code (and send this device's history to it).
    Approve {
        /// The code printed by `link request`.
        code: String,
        /// Do not send the conversations, contacts, groups and settings to the new device.
        #[arg(long)]
        no_history: bool,
    },
    /// On an existing device: send this device's history to another device of the account
    /// (again, after `link approve` could not).
    History {
        /// The device id `link approve` printed.
        device: u32,
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
            action: LinkAction::Approve { code, no_history },
        } => {
            let done = c.link_approve_with(&code, !no_history).await?;
            let device = done.device_id;
            if j {
                println!("{}", serde_json::to_string(&done).unwrap_or_default());
            } else {
                println!("device {device} linked; it receives the account key and contacts on its next sync");
                match (&done.history, &done.history_error) {
                    (Some(h), _) => println!(
                        "history sent ({} messages, {} bytes encrypted); the new device imports it on its next sync",
                        h.messages, h.bytes
                    ),
                    (None, Some(e)) => println!(
                        "the history was NOT sent: {e}\n  try again with `cipherpost link history {device}`"
                    ),
                    (None, None) => println!("no history sent (--no-history)"),
                }
            }
        }
        Command::Link {
            action: LinkAction::History { device },
        } => {
            let sent = c.send_history(device).await?;
            if j {
                println!("{}", serde_json::to_string(&sent).unwrap_or_default());
            } else {
                println!(
                    "history sent to device {device} ({} messages, {} bytes encrypted)",
                    sent.messages, sent.bytes
                );
            }
        }
        Command::Devices {
            action: Some(DevicesAction::Revoke { id }),
        } => {
            let r = c.revoke_device(id).await?;
            if j {
                println!("{}", json!(r));
            } else {
                println!("device {} of {} revoked: it can no longer sign in, and its queue and prekeys are gone", r.device_id, r.user);
                println!(
                    "the account key was rotated; remaining devices: {}",
                    r.remaining_devices
                        .iter()
                        .map(u32::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                println!("the other devices take the new key on their next sync; contacts see a new safety number (your fingerprint is now {})", r.fingerprint);
            }
        }
        Command::Devices {
            action: None | Some(DevicesAction::List),
        } => {
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
            group,
            args,
            files,
            caption,
        } => {
            let group_send = group.clone();
            let id = match (group, args.as_slice()) {
                (Some(_), _) if !files.is_empty() => {
                    return Err(ClientError::Usage(
                        "files cannot be sent to a group yet; send them to each contact".into(),
                    ))
                }
                (Some(g), [text]) => {
                    let g = c.resolve_group(&g)?;
                    c.queue_group_text(&g, text)?
                }
                (None, [to, text]) if files.is_empty() => c.queue_text(to, text)?,
                (None, [to]) if files.is_empty() => {
                    return Err(ClientError::Usage(format!(
                        "give a text, or one or more --file PATH: cipherpost send {to} TEXT"
                    )))
                }
                (None, [to, rest @ ..]) => {
                    let text = rest.first().cloned().or(caption);
                    c.queue_files(to, text.as_deref().unwrap_or(""), &files)?
                }
                (Some(_), _) => {
                    return Err(ClientError::Usage(
                        "with --group, give only the text: cipherpost send --group GROUP TEXT"
                            .into(),
                    ))
                }
                (None, _) => {
                    return Err(ClientError::Usage(
                        "give the contact and the text: cipherpost send TO TEXT".into(),
                    ))
                }
            };
            // The outbox may hold other messages; what is reported is this one's fate.
            let to = match args.as_slice() {
                [to, ..] if group_send.is_none() => Some(to.clone()),
                _ => None,
            };
            let flushed = match c.flush_outbox().await {
                Ok(_) => None,
                Err(e @ (ClientError::Unreachable { .. } | ClientError::Server { .. })) => Some(e),
                Err(e) => return Err(e),
            };
            for e in c.take_notices()? {
                show_event(j, &e);
            }
            let (queued, state) = c.store().outgoing_status(&id)?;
            let failed = !queued && state.as_deref() == Some("failed");
            let blocked = match &to {
                Some(to) if queued => c.store().is_blocked(to)?,
                _ => false,
            };
            let outcome = if failed {
                "failed"
            } else if queued {
                "queued"
            } else {
                "sent"
            };
            let attachments = c.attachments_of(&id)?;
            if j {
                println!(
                    "{}",
                    json!({"message_id": id, "sent": outcome == "sent", "state": outcome, "attachments": attachments})
                );
            } else if failed {
                println!("not sent (see the notice above)");
            } else if blocked {
                println!("queued until the changed key is accepted");
            } else if queued {
                match &flushed {
                    Some(e) => println!("queued ({e}); it will be sent by `cipherpost sync`"),
                    None => println!(
                        "queued; it will be sent when the server is reachable (`cipherpost sync`)"
                    ),
                }
            } else {
                println!("sent");
            }
            if let (true, Some(to)) = (blocked, to) {
                return Err(ClientError::KeyChanged(to));
            }
            if failed {
                return Err(ClientError::Usage("the message could not be sent".into()));
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
                    let title = c.conversation_title(&u);
                    println!("{title:<20} {n:>3} unread   {t}");
                }
            }
        }
        Command::History { user, group, limit } => {
            let conversation = match (user, group) {
                (_, Some(g)) => format!("group:{}", c.resolve_group(&g)?),
                (Some(u), None) => u,
                (None, None) => return Err(ClientError::Usage("name a contact or --group".into())),
            };
            show_messages(j, &c.store().history(&conversation, limit)?)
        }
        Command::Group { action } => group_command(&mut c, j, action).await?,
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

fn show_group(json: bool, g: &GroupInfo) {
    if json {
        println!("{}", serde_json::to_string(g).unwrap_or_default());
        return;
    }
    let name = if g.name.is_empty() {
        "(no name yet)"
    } else {
        g.name.as_str()
    };
    println!("{name}  id {}  version {}", g.group_id, g.version);
    if !g.active {
        println!("  you are no longer a member");
    }
    for m in &g.members {
        println!("  {}{}", m.user, if m.admin { "  (admin)" } else { "" });
    }
    println!("  {} device(s) receive its messages", g.devices);
}

async fn group_command(c: &mut Client, j: bool, action: GroupAction) -> Result<(), ClientError> {
    let info = match action {
        GroupAction::Create { name, members } => c.group_create(&name, &members).await?,
        GroupAction::Add { group, users } => {
            let g = c.resolve_group(&group)?;
            c.group_add(&g, &users).await?
        }
        GroupAction::Remove { group, user } => {
            let g = c.resolve_group(&group)?;
            c.group_remove(&g, &user).await?
        }
        GroupAction::Promote { group, user } => {
            let g = c.resolve_group(&group)?;
            c.group_set_admin(&g, &user, true).await?
        }
        GroupAction::Demote { group, user } => {
            let g = c.resolve_group(&group)?;
            c.group_set_admin(&g, &user, false).await?
        }
        GroupAction::Rename { group, name } => {
            let g = c.resolve_group(&group)?;
            c.set_group_name(&g, &name)?
        }
        GroupAction::Leave { group, successor } => {
            let g = c.resolve_group(&group)?;
            c.group_leave(&g, successor.as_deref()).await?;
            if j {
                println!("{}", json!({"group_id": g, "left": true}));
            } else {
                println!("you left the group");
            }
            return Ok(());
        }
        GroupAction::Info { group } => {
            let g = c.resolve_group(&group)?;
            c.group_info(&g).await?
        }
        GroupAction::List => {
            let groups = c.groups()?;
            if j {
                println!("{}", serde_json::to_string(&groups).unwrap_or_default());
            } else if groups.is_empty() {
                println!("no groups");
            }
            if !j {
                for g in &groups {
                    show_group(false, g);
                }
            }
            return Ok(());
        }
    };
    // Group updates (name, membership) go out now when the server is reachable.
    match c.flush_outbox().await {
        Ok(_) | Err(ClientError::Unreachable { .. }) => {}
        Err(e) => return Err(e),
    }
    show_group(j, &info);
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
