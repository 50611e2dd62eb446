#!/usr/bin/env python3
"""An echo bot for ptpchat's HTTP API, in Python's standard library alone.

It reads the node's event stream and answers every direct message with "echo: <text>".
Each answer is sent under an idempotency key made from the message's id, so a bot that
crashes and starts again answers no message twice; it resumes the stream after the last
message it handled (kept in a small state file), so it misses none either. On its first
start it answers every message the node holds.

    python3 examples/echo_bot.py --home ~/.local/share/ptpchat

The node must be running (`ptpchat run`); the API's address and token are read from
`ptpchat ui --json` (or given with --url and --token).
"""

import argparse
import json
import os
import subprocess
import sys
import urllib.request


def node_url_and_token(args):
    if args.url and args.token:
        return args.url.rstrip("/"), args.token
    out = subprocess.run(
        [args.ptpchat, "--home", args.home, "ui", "--json"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    ui = json.loads(out)
    return "http://" + ui["address"], ui["url"].split("#token=", 1)[1]


def send(base, token, to, text, key):
    req = urllib.request.Request(
        base + "/api/v1/send",
        data=json.dumps({"to": to, "text": text}).encode(),
        headers={
            "Authorization": "Bearer " + token,
            "Content-Type": "application/json",
            "Idempotency-Key": key,
        },
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.load(r)


def events(base, token, last_id):
    """Yields (id, event, data) from the node's event stream, from after last_id."""
    headers = {"Authorization": "Bearer " + token, "Accept": "text/event-stream"}
    if last_id:
        headers["Last-Event-ID"] = last_id
    req = urllib.request.Request(base + "/api/v1/events", headers=headers)
    with urllib.request.urlopen(req, timeout=None) as stream:
        ev_id, ev_name, data = None, "message", []
        for raw in stream:
            line = raw.decode("utf-8").rstrip("\r\n")
            if line == "":
                if data:
                    yield ev_id, ev_name, json.loads("\n".join(data))
                ev_id, ev_name, data = None, "message", []
            elif line.startswith(":"):
                continue
            else:
                field, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if field == "id":
                    ev_id = value
                elif field == "event":
                    ev_name = value
                elif field == "data":
                    data.append(value)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--home", default=os.environ.get("PTPCHAT_HOME", ""))
    p.add_argument("--ptpchat", default="ptpchat", help="the ptpchat binary")
    p.add_argument("--url", help="the API's base, e.g. http://127.0.0.1:7480")
    p.add_argument("--token", help="the API's token (<home>/http.token)")
    p.add_argument("--state", default="echo_bot.state", help="where the last handled id is kept")
    p.add_argument("--count", type=int, default=0, help="stop after answering this many (0: never)")
    args = p.parse_args()

    base, token = node_url_and_token(args)
    last = open(args.state).read().strip() if os.path.exists(args.state) else None
    answered = 0
    for ev_id, name, data in events(base, token, last):
        if name == "error":
            sys.exit("the node ended the stream: " + data.get("error", "?"))
        # Channel posts and our own messages are not for the echo bot.
        if data.get("channel_id") or data.get("direction") != "in":
            continue
        reply = send(base, token, data["from"], "echo: " + data["text"], "echo-" + data["msg_id"])
        print(f"answered {data['msg_id']}: {reply['status']}", flush=True)
        with open(args.state, "w") as f:
            f.write(ev_id or data["msg_id"])
        answered += 1
        if args.count and answered >= args.count:
            return


if __name__ == "__main__":
    main()
