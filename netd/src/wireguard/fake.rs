//! An in-memory kernel for the planner and apply tests.

use std::time::SystemTime;

use super::action::Action;
use super::adapter::{WgError, WgKernel};
use super::state::{Observed, ObservedDevice, ObservedPeer};

/// Holds [`Observed`] and applies steps to it like the kernel would.
#[derive(Debug, Default, Clone)]
pub struct FakeWg {
    pub state: Observed,
    /// Every batch executed, in order.
    pub batches: Vec<Vec<Action>>,
    /// Fail the batch whose index in [`Self::batches`] is this, after applying its first
    /// step (a batch of one fails before it).
    pub fail_at: Option<usize>,
}

impl FakeWg {
    pub fn new(state: Observed) -> Self {
        Self {
            state,
            ..Self::default()
        }
    }

    fn device(&mut self, name: &str, op: &Action) -> Result<&mut ObservedDevice, WgError> {
        self.state
            .devices
            .iter_mut()
            .find(|d| d.name == name)
            .ok_or_else(|| WgError::new(op.to_string(), "No such device"))
    }

    fn step(&mut self, a: &Action) -> Result<(), WgError> {
        match a {
            Action::CreateLink { name, mtu } => {
                if self.state.device(name).is_some() || self.state.foreign.contains(name) {
                    return Err(WgError::new(a.to_string(), "File exists"));
                }
                self.state.devices.push(ObservedDevice {
                    name: name.clone(),
                    mtu: *mtu,
                    up: false,
                    addresses: Vec::new(),
                    private_key: None,
                    public_key: None,
                    listen_port: 0,
                    peers: Vec::new(),
                });
            }
            Action::DeleteLink { name, .. } => {
                self.device(name, a)?;
                self.state.devices.retain(|d| d.name != *name);
            }
            Action::SetMtu { name, mtu, .. } => self.device(name, a)?.mtu = *mtu,
            Action::SetUp { name, up } => self.device(name, a)?.up = *up,
            Action::AddAddress { name, net } => {
                let d = self.device(name, a)?;
                if d.addresses.contains(net) {
                    return Err(WgError::new(a.to_string(), "File exists"));
                }
                d.addresses.push(*net);
            }
            Action::RemoveAddress { name, net } => {
                let d = self.device(name, a)?;
                d.addresses.retain(|n| n != net);
            }
            Action::SetPrivateKey { name, key, .. } => {
                let d = self.device(name, a)?;
                d.private_key = Some(key.clone());
                d.public_key = Some(super::keys::public_of(key));
            }
            Action::SetListenPort { name, port, .. } => {
                // The kernel picks a port for 0; any fixed one stands in for it.
                self.device(name, a)?.listen_port = port.unwrap_or(40000);
            }
            Action::AddPeer { name, peer } | Action::UpdatePeer { name, peer, .. } => {
                let d = self.device(name, a)?;
                match d
                    .peers
                    .iter_mut()
                    .find(|p| p.peer.public_key == peer.public_key)
                {
                    Some(p) => {
                        let endpoint = peer.endpoint.or(p.peer.endpoint);
                        p.peer = peer.clone();
                        p.peer.endpoint = endpoint;
                    }
                    None => d.peers.push(ObservedPeer {
                        peer: peer.clone(),
                        last_handshake: None,
                        rx_bytes: 0,
                        tx_bytes: 0,
                    }),
                }
            }
            Action::RemovePeer { name, peer } => {
                let d = self.device(name, a)?;
                d.peers.retain(|p| p.peer.public_key != peer.public_key);
            }
        }
        Ok(())
    }

    /// Records a handshake, as a peer's traffic would.
    pub fn handshake(&mut self, name: &str, peer: usize, at: SystemTime) {
        if let Some(p) = self
            .state
            .devices
            .iter_mut()
            .find(|d| d.name == name)
            .and_then(|d| d.peers.get_mut(peer))
        {
            p.last_handshake = Some(at);
        }
    }
}

impl WgKernel for FakeWg {
    fn observe(&mut self) -> Result<Observed, WgError> {
        let mut s = self.state.clone();
        for d in &mut s.devices {
            d.peers.sort_by_key(|p| p.peer.public_key);
        }
        Ok(s)
    }

    fn execute(&mut self, batch: &[Action]) -> Result<(), WgError> {
        let index = self.batches.len();
        self.batches.push(batch.to_vec());
        for (i, a) in batch.iter().enumerate() {
            if self.fail_at == Some(index) && i == 1.min(batch.len().saturating_sub(1)) {
                return Err(WgError::new(a.to_string(), "Injected failure"));
            }
            self.step(a)?;
        }
        Ok(())
    }
}
