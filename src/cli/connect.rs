//! `connect`, `requests`, `accept`, `deny`: thin clients of the control socket.

use std::path::Path;

use super::messages::finish;
use super::{ask, ask_full, print_json, CliError};
use crate::control::answers::{ConnectAnswer, RequestAnswered, RequestLine};
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
    match resp.data_as::<ConnectAnswer>()? {
        Some(a) if json => print_json(&a),
        Some(a) if resp.ok => {
            let status = a.status.as_str();
            match &a.addr {
                Some(addr) => println!("{status} {addr}"),
                None => println!("{status}"),
            }
        }
        _ => {}
    }
    if let Some(w) = &resp.warning {
        eprintln!("ptpchat: {w}");
    }
    finish(resp)
}

pub async fn requests(home: &Path, json: bool) -> Result<(), CliError> {
    let requests: Vec<RequestLine> = ask(home, ControlRequest::Requests).await?;
    for r in requests {
        if json {
            print_json(&r);
        } else {
            println!(
                "{}  {}{}{}",
                r.request_id,
                r.from,
                r.from_name
                    .as_deref()
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default(),
                if r.verified { "  verified" } else { "" }
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
    let answered: RequestAnswered = ask(home, req).await?;
    if json {
        print_json(&answered);
    } else {
        println!(
            "{} {request_id}",
            if accept { "accepted" } else { "denied" }
        );
    }
    Ok(())
}
