//! The transaction outbox: every transaction the daemon signs, from the decision to its
//! observed effect. It is what makes sending exactly-once across crashes and restarts.
//!
//! The order is fixed: sign (with an explicit nonce), **persist** the signed bytes with the
//! snapshot, then broadcast. A crash before the save loses only a decision, which the core makes
//! again; a crash after it finds the same signed transaction in the outbox and broadcasts the
//! same bytes again, which the chain accepts at most once (same nonce, same hash).
//!
//! Pure data and decisions; the app performs the RPCs it asks for.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::chain::client::SignedTx;
use crate::core::node::Intent;

/// One signed transaction and what became of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub intent: Intent,
    pub tx: SignedTx,
    /// Block in which a receipt was seen, and whether it succeeded.
    pub mined: Option<(u64, bool)>,
}

/// Transactions by intent key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outbox {
    pending: BTreeMap<String, Pending>,
}

impl Outbox {
    pub fn contains(&self, key: &str) -> bool {
        self.pending.contains_key(key)
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// The nonce for the next transaction: after the chain's mined count and after every
    /// nonce this outbox already holds.
    pub fn next_nonce(&self, mined_nonce: u64) -> u64 {
        self.pending.values().map(|p| p.tx.nonce + 1).max().unwrap_or(0).max(mined_nonce)
    }

    pub fn insert(&mut self, intent: Intent, tx: SignedTx) {
        self.pending.insert(intent.key(), Pending { intent, tx, mined: None });
    }

    /// Transactions without a receipt yet: to broadcast (again) and to ask receipts for.
    pub fn unmined(&self) -> impl Iterator<Item = (&str, &SignedTx)> {
        self.pending.iter().filter(|(_, p)| p.mined.is_none()).map(|(k, p)| (k.as_str(), &p.tx))
    }

    /// Records a receipt; returns whether it is news.
    pub fn mark_mined(&mut self, key: &str, block: u64, success: bool) -> bool {
        match self.pending.get_mut(key) {
            Some(p) if p.mined.is_none() => {
                p.mined = Some((block, success));
                true
            }
            _ => false,
        }
    }

    /// Forgets transactions whose block the follower has processed: their effect is in the
    /// core's state now.
    pub fn settle(&mut self, processed_block: u64) {
        self.pending.retain(|_, p| !matches!(p.mined, Some((block, _)) if block <= processed_block));
    }

    /// After a reorg back to `block`: receipts from later blocks may be gone with them, so those
    /// transactions are unmined again (their receipts are asked for, their bytes broadcast).
    pub fn unmark_mined_after(&mut self, block: u64) {
        for p in self.pending.values_mut() {
            if matches!(p.mined, Some((mined, _)) if mined > block) {
                p.mined = None;
            }
        }
    }

    /// Drops a transaction that can never be mined (its nonce was used by another one).
    pub fn drop_key(&mut self, key: &str) -> Option<Pending> {
        self.pending.remove(key)
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.pending.keys().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tx(nonce: u64) -> SignedTx {
        SignedTx { hash: [nonce as u8; 32], raw: vec![nonce as u8], nonce }
    }

    #[test]
    fn nonces_follow_the_chain_and_the_pending_transactions() {
        let mut outbox = Outbox::default();
        assert_eq!(outbox.next_nonce(5), 5);
        outbox.insert(Intent::Pause, tx(5));
        outbox.insert(Intent::Withdraw, tx(6));
        assert_eq!(outbox.next_nonce(5), 7);
        // The chain moved past them (mined, not yet settled): still after the last one.
        assert_eq!(outbox.next_nonce(9), 9);
    }

    #[test]
    fn a_mined_transaction_stays_until_its_block_is_processed() {
        let mut outbox = Outbox::default();
        outbox.insert(Intent::Pause, tx(0));
        assert!(outbox.mark_mined("pause", 10, true));
        assert!(!outbox.mark_mined("pause", 10, true), "a receipt is news once");
        assert_eq!(outbox.unmined().count(), 0);
        outbox.settle(9);
        assert!(outbox.contains("pause"));
        outbox.settle(10);
        assert!(outbox.is_empty());
    }

    #[test]
    fn a_reorg_unmarks_receipts_from_the_abandoned_blocks() {
        let mut outbox = Outbox::default();
        outbox.insert(Intent::Pause, tx(0));
        outbox.insert(Intent::Resume, tx(1));
        outbox.mark_mined("pause", 5, true);
        outbox.mark_mined("resume", 8, true);
        outbox.unmark_mined_after(6);
        let unmined: Vec<_> = outbox.unmined().map(|(k, _)| k).collect();
        assert_eq!(unmined, vec!["resume"]);
    }

    #[test]
    fn it_survives_a_round_trip_through_the_snapshot_format() {
        let mut outbox = Outbox::default();
        outbox.insert(Intent::Accept(3), tx(1));
        let json = serde_json::to_string(&outbox).unwrap();
        assert_eq!(serde_json::from_str::<Outbox>(&json).unwrap(), outbox);
    }
}
