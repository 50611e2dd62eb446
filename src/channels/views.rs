//! What `channel list` and `channel members` show ([`ChannelView`], [`MemberView`]), and
//! how a channel named on the command line is found.

use std::collections::HashSet;

use serde::Serialize;
use uuid::Uuid;

use super::membership::member_count;
use super::{fail, ChannelError, Channels};
use crate::error::ErrorKind;
use crate::store::ChannelRow;

/// One channel as `channel list` prints it (and the CLI reads back).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ChannelView {
    pub channel_id: String,
    pub name: String,
    pub private: bool,
    pub joined: bool,
    /// A private channel we were given the key to but have not joined.
    pub invited: bool,
    pub members: usize,
    /// A private channel's key epoch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u32>,
}

/// One member as `channel members` prints it.
#[derive(Clone, Debug, Serialize)]
pub struct MemberView {
    pub uuid: String,
    pub name: Option<String>,
}

impl Channels {
    /// Finds a channel by id or name: ours first, then discovered public ones.
    pub(super) fn resolve(&self, target: &str) -> Result<(Uuid, Option<ChannelRow>), ChannelError> {
        let st = self.state();
        if let Ok(id) = Uuid::try_parse(target) {
            return Ok((id, st.rows.get(&id).cloned()));
        }
        let mine: Vec<(Uuid, ChannelRow)> = st
            .rows
            .iter()
            .filter(|(_, r)| r.name == target)
            .map(|(i, r)| (*i, r.clone()))
            .collect();
        let joined: Vec<&(Uuid, ChannelRow)> = mine.iter().filter(|(_, r)| r.joined).collect();
        if let [(id, row)] = joined.as_slice() {
            return Ok((*id, Some(row.clone())));
        }
        if let [(id, row)] = mine.as_slice() {
            return Ok((*id, Some(row.clone())));
        }
        let found = st.discovered.named(target);
        match (mine.len(), found.as_slice()) {
            (0, []) => Err(fail(
                ErrorKind::NotFound,
                format!(
                    "no channel called {target} is known (private channels need an invitation)"
                ),
            )),
            (0, [id]) => Ok((*id, None)),
            _ => {
                let ids: Vec<String> = mine
                    .iter()
                    .map(|(i, _)| i.to_string())
                    .chain(found.iter().map(|i| i.to_string()))
                    .collect();
                Err(fail(
                    ErrorKind::Failed,
                    format!(
                        "several channels are called {target}: {}; use the id",
                        ids.join(", ")
                    ),
                ))
            }
        }
    }

    /// Channels we know; with `all`, also public channels discovered on the network.
    pub fn list(&self, all: bool) -> Vec<ChannelView> {
        let st = self.state();
        let mut out: Vec<ChannelView> = st
            .rows
            .iter()
            .filter(|(_, r)| r.joined || (all && (!r.private || r.key.is_some())))
            .map(|(id, r)| ChannelView {
                channel_id: id.to_string(),
                name: r.name.clone(),
                private: r.private,
                joined: r.joined,
                invited: r.private && !r.joined && r.key.is_some(),
                members: member_count(&st.heard, id, r),
                epoch: r.private.then_some(r.epoch),
            })
            .collect();
        if all {
            for (id, d) in st.discovered.iter() {
                if !st.rows.contains_key(id) {
                    out.push(ChannelView {
                        channel_id: id.to_string(),
                        name: d.name.clone(),
                        private: false,
                        joined: false,
                        invited: false,
                        members: d.members.len(),
                        epoch: None,
                    });
                }
            }
        }
        out.sort_by(|a, b| (&a.name, &a.channel_id).cmp(&(&b.name, &b.channel_id)));
        out
    }

    /// Names of joined channels (for `status`).
    pub fn joined_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .state()
            .rows
            .values()
            .filter(|r| r.joined)
            .map(|r| r.name.clone())
            .collect();
        names.sort();
        names
    }

    /// The name of a channel we know, by id.
    pub fn name_of(&self, id: &Uuid) -> Option<String> {
        self.state().rows.get(id).map(|r| r.name.clone())
    }

    /// Resolves a channel we are in (or were in) to its id, for `recv --channel`.
    pub fn id_of(&self, target: &str) -> Result<Uuid, ChannelError> {
        self.resolve(target).map(|(id, _)| id)
    }

    /// The members of a channel we are in: for a public channel those heard from lately;
    /// for a private one also everyone known to hold the current key.
    pub fn members(&self, target: &str) -> Result<Vec<Uuid>, ChannelError> {
        let (id, row) = self.resolve(target)?;
        let st = self.state();
        let mut set: HashSet<Uuid> = st.heard.of(&id).collect();
        match row {
            Some(r) if r.joined => {
                set.extend(r.members.iter().map(|m| Uuid::from_bytes(**m)));
            }
            _ => {
                if let Some(d) = st.discovered.get(&id) {
                    set.extend(d.members.iter().copied());
                } else {
                    return Err(fail(ErrorKind::Failed, format!("you are not in {target}")));
                }
            }
        }
        let mut v: Vec<Uuid> = set.into_iter().collect();
        v.sort();
        Ok(v)
    }
}
