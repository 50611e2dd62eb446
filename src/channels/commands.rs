//! The channel commands (`channel create / join / leave / invite / remove`) and the key
//! changes that follow a LEAVE or a received grant: each asks [`membership`] what to do and
//! carries it out (the store, the network, the messenger).

use tracing::{debug, info, warn};
use uuid::Uuid;

use super::membership;
use super::{fail, ChannelError, Channels};
use crate::counters::Counter;
use crate::error::ErrorKind;
use crate::messaging::GrantNote;
use crate::store::{ChannelRow, GrantOutcome};
use crate::wire::frame;

impl Channels {
    /// Creates a channel and joins it.
    pub async fn create(&self, name: &str, private: bool) -> Result<Uuid, ChannelError> {
        frame::check_name(name).map_err(|e| fail(ErrorKind::BadInput, e))?;
        let me = self.me().await?;
        if self
            .state()
            .rows
            .values()
            .any(|r| r.joined && r.name == name)
        {
            return Err(fail(
                ErrorKind::Failed,
                format!("you are already in a channel called {name}"),
            ));
        }
        let id = Uuid::new_v4();
        let key = private.then(crate::identity::random_secret);
        let row = membership::created(name, me.uuid, key, crate::unix_now_ms());
        self.save(&id, &row)?;
        info!(channel = %id, name, private, "created a channel");
        self.activate(id).await;
        Ok(id)
    }

    /// Joins a public channel, or a private one we were invited to.
    pub async fn join(&self, target: &str) -> Result<(Uuid, ChannelRow), ChannelError> {
        let (id, row) = self.resolve(target)?;
        let row = match row {
            Some(r) if r.joined => return Ok((id, r)),
            Some(mut r) => {
                membership::may_join(&r)?;
                r.joined = true;
                r
            }
            None => {
                let name = self.state().discovered.get(&id).map(|d| d.name.clone());
                let Some(name) = name else {
                    return Err(fail(
                        ErrorKind::NotFound,
                        format!("channel {id} is not known (private channels need an invitation)"),
                    ));
                };
                membership::discovered(name, crate::unix_now_ms())
            }
        };
        match self.me().await {
            Ok(me) => self.save(&id, &membership::with_me(&row, me.uuid))?,
            Err(_) => self.save(&id, &row)?,
        }
        info!(channel = %id, name = %row.name, "joined a channel");
        self.activate(id).await;
        let _ = self.publish_frame(id, frame::JOIN, String::new()).await;
        Ok((id, row))
    }

    /// Subscribes, provides the channel's key in the DHT, and looks for members.
    pub(super) async fn activate(&self, id: Uuid) {
        let net = &self.inner.net;
        let _ = net.subscribe(frame::topic(&id), true).await;
        let _ = net.provide(frame::provider_key(&id), true).await;
        if let Some(me) = self.inner.messenger.current_keys() {
            self.state().heard.hear(id, me.uuid, crate::unix_now_ms());
        }
        let _ = self.announce(id).await;
    }

    /// Leaves a channel: tells the members, stops listening and providing, and forgets
    /// a private channel's key (a new invitation is needed to come back).
    pub async fn leave(&self, target: &str) -> Result<Uuid, ChannelError> {
        let (id, row) = self.resolve(target)?;
        let Some(row) = row.filter(|r| r.joined) else {
            return Err(fail(ErrorKind::Failed, format!("you are not in {target}")));
        };
        let _ = self.publish_frame(id, frame::LEAVE, String::new()).await;
        let net = &self.inner.net;
        let _ = net.subscribe(frame::topic(&id), false).await;
        let _ = net.provide(frame::provider_key(&id), false).await;
        let row = membership::left(row);
        self.save(&id, &row)?;
        self.state().heard.forget_channel(&id);
        info!(channel = %id, name = %row.name, "left a channel");
        Ok(id)
    }

    /// Invites `who` into a private channel we are in: sends them the current key.
    pub async fn invite(&self, target: &str, who: Uuid) -> Result<Uuid, ChannelError> {
        let (id, row) = self.resolve(target)?;
        let Some(row) = row.filter(|r| r.joined) else {
            return Err(fail(ErrorKind::Failed, format!("you are not in {target}")));
        };
        membership::may_invite(&row)?;
        let me = self.me().await?;
        let (row, grant) = membership::invite(&id, &row, me.uuid, who)?;
        self.save(&id, &row)?;
        self.inner
            .messenger
            .send_grant(who, &grant)
            .await
            .map_err(|e| fail(ErrorKind::Failed, e.to_string()))?;
        info!(channel = %id, name = %row.name, invited = %who, "sent a channel invitation");
        Ok(id)
    }

    /// Removes `who` from a private channel we are in: the key moves to a new epoch that
    /// goes to everyone else, so `who` cannot read what is posted from now on.
    pub async fn remove(&self, target: &str, who: Uuid) -> Result<(Uuid, u32), ChannelError> {
        let (id, row) = self.resolve(target)?;
        let Some(row) = row.filter(|r| r.joined) else {
            return Err(fail(ErrorKind::Failed, format!("you are not in {target}")));
        };
        membership::may_remove(&row)?;
        let me = self.me().await?;
        let row = membership::remove(&row, me.uuid, who)?;
        self.state().heard.forget(&id, &who);
        self.rotate(id, row).await?;
        let epoch = {
            let st = self.state();
            st.rows
                .get(&id)
                .filter(|r| r.key.is_some())
                .map(|r| r.epoch)
                .unwrap_or_default()
        };
        info!(channel = %id, removed = %who, epoch, "removed a member");
        Ok((id, epoch))
    }

    /// A member left. For a private channel the key moves to a new epoch, sent to everyone
    /// else; one remaining member does it, chosen by [`membership::keeper`] so that no member
    /// can make itself the one who always does (and then does not).
    pub(super) async fn member_left(&self, id: Uuid, who: Uuid) {
        let row = {
            let mut st = self.state();
            st.heard.forget(&id, &who);
            st.rows.get(&id).cloned()
        };
        let Some(row) = row.and_then(|r| membership::after_leave(&r, &who)) else {
            return;
        };
        let Ok(me) = self.me().await else { return };
        if !membership::keeps_key(&id, &row, &who, me.uuid) {
            let _ = self.save(&id, &row);
            return;
        }
        if let Err(e) = self.rotate(id, row).await {
            warn!(channel = %id, error = %e, "could not rotate the channel key");
        }
    }

    /// Moves a private channel to a new key epoch and sends the key to every other member.
    async fn rotate(&self, id: Uuid, row: ChannelRow) -> Result<(), ChannelError> {
        let me = self.me().await?;
        let key = crate::identity::random_secret();
        let membership::Rotation { row, grant, to } = membership::rotate(&id, row, me.uuid, key)?;
        self.save(&id, &row)?;
        info!(channel = %id, name = %row.name, epoch = row.epoch, "channel key rotated");
        for to in to {
            if let Err(e) = self.inner.messenger.send_grant(to, &grant).await {
                warn!(channel = %id, member = %to, error = %e, "could not queue the new key");
            }
        }
        Ok(())
    }

    /// Someone who sealed a valid frame under the current key holds it: remember them, so a
    /// rotation reaches them too.
    pub(super) fn note_key_holder(&self, id: Uuid, member: Uuid) {
        let row = self
            .state()
            .rows
            .get(&id)
            .and_then(|r| membership::note_key_holder(r, member));
        if let Some(r) = row {
            let _ = self.save(&id, &r);
        }
    }

    /// A key grant arrived (and is already stored).
    pub(super) fn on_grant(&self, note: GrantNote) {
        match note.outcome {
            GrantOutcome::Invited => {
                debug!(channel = %note.channel, from = %note.from, "invited by");
                info!(name = %note.name, "invited to a private channel; `ptpchat channel join` to accept");
            }
            GrantOutcome::Rotated => {
                info!(channel = %note.channel, name = %note.name, epoch = note.epoch, "channel key rotated by a member");
            }
            GrantOutcome::Ignored(why) => {
                self.inner.counters.count(Counter::ChannelGrantIgnored);
                debug!(channel = %note.channel, from = %note.from, why, "ignored a channel key");
                return;
            }
        }
        if let Ok(Some(row)) = self
            .inner
            .store
            .channels()
            .map(|all| all.into_iter().find(|(i, _)| *i == note.channel))
        {
            self.state().rows.insert(row.0, row.1);
        }
    }
}
