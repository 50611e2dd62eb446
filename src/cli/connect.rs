//! `connect`, `requests`, `accept`, `deny`: thin clients of the control socket.

use std::path::Path;

use super::messages::finish;
use super::{ask, ask_full, plain, print_json, CliError};
use crate::control::ControlRequest;

pub async fn connect(home: &Path, json: bool, to: String, timeout: u64) -> Result<(), CliError> {
    let resp = ask_full(
        home,
        ControlRequest::Connect {
            to,
            timeout_ms: Some(timeout.saturating_mul(1000)),
        },
    )
    .await?;
    let data = resp.data.clone().unwrap_or_default();
    if json && !data.is_null() {
        print_json(&data);
    } else if resp.ok {
        match data["addr"].as_str() {
            Some(addr) => println!("{} {addr}", plain(&data["status"])),
            None => println!("{}", plain(&data["status"])),
        }
    }
    if let Some(w) = &resp.warning {
        eprintln!("ptpchat: {w}");
    }
    finish(resp)
}

pub async fn requests(home: &Path, json: bool) -> Result<(), CliError> {
    let data = ask(home, ControlRequest::Requests).await?;
    for r in data.as_array().into_iter().flatten() {
        if json {
            print_json(r);
        } else {
            println!(
                "{}  {}{}{}",
                plain(&r["request_id"]),
                plain(&r["from"]),
                r["from_name"]
                    .as_str()
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default(),
                if r["verified"].as_bool() == Some(true) {
                    "  verified"
                } else {
                    ""
                }
            );
        }
    }
    Ok(())
}

pub async fn answer(
    home: &Path,
    json: bool,
    request_id: u64,
    accept: bool,
) -> Result<(), CliError> {
    let req = if accept {
        ControlRequest::Accept { request_id }
    } else {
        ControlRequest::Deny { request_id }
    };
    let data = ask(home, req).await?;
    if json {
        print_json(&data);
    } else {
        println!(
            "{} {request_id}",
            if accept { "accepted" } else { "denied" }
        );
    }
    Ok(())
}
