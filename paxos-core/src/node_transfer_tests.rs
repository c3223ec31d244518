//! Leader transfer through the node driver ([`NodeHandle::transfer_leadership`]): the
//! command runs inside the node task and its TIMEOUT-NOW leaves with the next flush.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::error::{NodeError, TransferError};
use crate::node::{spawn_node, NodeHandle, NodeOptions};
use crate::{
    Client, Config, Endpoint, MemStorage, Message, NodeId, RestoreError, Role, StateMachine,
    Transport, TransportError,
};

/// A running sum (also the state machine of `node_inspect_tests`).
#[derive(Default)]
pub(crate) struct Sum(pub(crate) u64);

impl StateMachine for Sum {
    type Command = u64;
    type Output = u64;
    fn apply(&mut self, n: u64) -> u64 {
        self.0 = self.0.saturating_add(n);
        self.0
    }
    fn snapshot(&self) -> Vec<u8> {
        self.0.to_le_bytes().to_vec()
    }
    fn restore(&mut self, bytes: &[u8]) -> Result<(), RestoreError> {
        let raw: [u8; 8] = bytes
            .try_into()
            .map_err(|_| RestoreError::new("want 8 bytes"))?;
        self.0 = u64::from_le_bytes(raw);
        Ok(())
    }
}

struct Net {
    node: NodeId,
    peers: Arc<HashMap<NodeId, mpsc::UnboundedSender<(NodeId, Message)>>>,
    inbox: mpsc::UnboundedReceiver<(NodeId, Message)>,
}

impl Transport for Net {
    fn send(&self, to: NodeId, message: Message) -> Result<(), TransportError> {
        let peer = self.peers.get(&to).ok_or(TransportError::UnknownPeer(to))?;
        let _ = peer.send((self.node, message));
        Ok(())
    }

    async fn recv(&mut self) -> Option<(NodeId, Message)> {
        self.inbox.recv().await
    }

    fn try_recv(&mut self) -> Option<(NodeId, Message)> {
        self.inbox.try_recv().ok()
    }
}

fn cluster(ids: &[NodeId]) -> Vec<NodeHandle<Sum>> {
    let mut senders = HashMap::new();
    let mut inboxes = HashMap::new();
    for &id in ids {
        let (tx, rx) = mpsc::unbounded_channel();
        senders.insert(id, tx);
        inboxes.insert(id, rx);
    }
    let peers = Arc::new(senders);
    let options = NodeOptions::default().with_tick(Duration::from_millis(5));
    ids.iter()
        .map(|&id| {
            let net = Net {
                node: id,
                peers: peers.clone(),
                inbox: inboxes.remove(&id).expect("inbox"),
            };
            spawn_node(
                Config::new(id, ids.to_vec()),
                Sum::default(),
                net,
                MemStorage::new(),
                options.clone(),
            )
            .expect("node starts")
        })
        .collect()
}

/// The node that says it leads, waited for.
async fn leader_of(nodes: &[NodeHandle<Sum>], not: Option<NodeId>) -> NodeId {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        for n in nodes {
            let s = n.status().await.expect("status");
            if s.role == Role::Leader && Some(n.id()) != not {
                return n.id();
            }
        }
        assert!(Instant::now() < deadline, "no leader within 5 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_hands_leadership_to_the_member_it_names() {
    let nodes = cluster(&[1, 2, 3]);
    let endpoints: Vec<Arc<dyn Endpoint>> = nodes
        .iter()
        .map(|n| Arc::new(n.clone()) as Arc<dyn Endpoint>)
        .collect();
    let mut client: Client<Sum> = Client::new(endpoints);
    assert_eq!(client.execute(&2).await.expect("execute"), 2);
    let old = leader_of(&nodes, None).await;
    let handle = |id: NodeId| &nodes[(id - 1) as usize];
    let target = if old == 3 { 2 } else { 3 };
    let follower = (1..=3).find(|&n| n != old && n != target).expect("a third");

    // Refusals carry the core's reason.
    assert_eq!(
        handle(old).transfer_leadership(old).await,
        Err(NodeError::Transfer(TransferError::AlreadyLeader))
    );
    assert_eq!(
        handle(old).transfer_leadership(9).await,
        Err(NodeError::Transfer(TransferError::NotAMember(9)))
    );
    assert!(matches!(
        handle(follower).transfer_leadership(target).await,
        Err(NodeError::Transfer(TransferError::NotLeader { .. }))
    ));

    let started = Instant::now();
    handle(old)
        .transfer_leadership(target)
        .await
        .expect("transfer starts");
    let deadline = started + Duration::from_secs(5);
    loop {
        let s = handle(target).status().await.expect("status");
        if s.role == Role::Leader {
            break;
        }
        assert!(Instant::now() < deadline, "n{target} did not take over");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // Nothing chosen is lost, and the cluster serves under its new leader.
    assert_eq!(client.execute(&3).await.expect("execute"), 5);
    for n in &nodes {
        n.shutdown().await;
    }
    assert_eq!(
        handle(old).transfer_leadership(target).await,
        Err(NodeError::Stopped)
    );
}
