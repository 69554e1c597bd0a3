//! When a poller asks for protection: the protect mode's decisions, in one place.
//!
//! - `before-receive`: every receive is covered while work flows; when a receive comes back
//!   empty with no job running, the pollers go idle together: they stop asking for protection
//!   and go on receiving under the grant that still holds (the minimum hold), and once it is
//!   released they wait the idle window and from then on receive unprotected until messages
//!   arrive.
//! - `on-receipt`: receives are covered only while jobs run; messages that arrive unprotected
//!   get protection before any of them starts.

use crate::config::ProtectMode;

/// What to do after a receive came back empty while no job runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum WhenEmpty {
    /// Nothing: protection is off.
    Nothing,
    /// Give this poller's protection up (the task releases once no poller needs it).
    Release,
    /// Go idle with the other pollers: release together, then wait the idle window.
    GoIdle,
}

/// One poller's protect-mode state.
#[derive(Debug, Clone)]
pub(super) struct ProtectPolicy {
    mode: ProtectMode,
    enabled: bool,
    /// before-receive, after an idle release and its window: receive unprotected until messages
    /// arrive. Re-taking protection for every empty poll would cost agent calls and keep an idle
    /// task protected most of the time, so ECS could stop it only inside the idle windows.
    idle_unprotected: bool,
}

impl ProtectPolicy {
    pub(super) fn new(mode: ProtectMode, enabled: bool) -> Self {
        Self {
            mode,
            enabled,
            idle_unprotected: false,
        }
    }

    /// Must protection be asked for to cover the next receive? Not during an idle period: the
    /// pollers are letting go together, and receive under whatever grant still holds.
    pub(super) fn cover_receive(&self, jobs_running: bool, idle_period: bool) -> bool {
        self.enabled
            && (jobs_running
                || (self.mode == ProtectMode::BeforeReceive
                    && !self.idle_unprotected
                    && !idle_period))
    }

    /// A receive came back empty and no job runs.
    pub(super) fn when_empty(&self) -> WhenEmpty {
        if !self.enabled {
            WhenEmpty::Nothing
        } else if self.mode == ProtectMode::BeforeReceive && !self.idle_unprotected {
            WhenEmpty::GoIdle
        } else {
            WhenEmpty::Release
        }
    }

    /// The idle release and its window are over.
    pub(super) fn went_idle(&mut self) {
        self.idle_unprotected = true;
    }

    /// Messages arrived: must protection be taken before they start? Yes when the receive was
    /// not covered, and always in on-receipt mode (a no-op when protection is already held).
    pub(super) fn cover_after_receipt(&mut self, receive_was_covered: bool) -> bool {
        // Work again: the next idle spell starts with a release (and its window) once more.
        self.idle_unprotected = false;
        self.enabled && (self.mode == ProtectMode::OnReceipt || !receive_was_covered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn before_receive_covers_until_idle_then_polls_unprotected_until_work() {
        let mut p = ProtectPolicy::new(ProtectMode::BeforeReceive, true);
        assert!(p.cover_receive(false, false));
        assert_eq!(p.when_empty(), WhenEmpty::GoIdle);
        assert!(
            !p.cover_receive(false, true),
            "idle period: receive under the grant that still holds"
        );
        p.went_idle();
        assert!(!p.cover_receive(false, false), "idle: unprotected polls");
        assert!(p.cover_receive(true, false), "jobs running: always covered");
        assert!(p.cover_receive(true, true), "jobs running: always covered");
        assert_eq!(p.when_empty(), WhenEmpty::Release);
        assert!(
            p.cover_after_receipt(false),
            "uncovered messages get protection first"
        );
        assert!(
            p.cover_receive(false, false),
            "work again: covered receives"
        );
        assert!(!p.cover_after_receipt(true));
    }

    #[test]
    fn on_receipt_covers_only_while_jobs_run_and_every_receipt() {
        let mut p = ProtectPolicy::new(ProtectMode::OnReceipt, true);
        assert!(!p.cover_receive(false, false));
        assert!(p.cover_receive(true, false));
        assert_eq!(p.when_empty(), WhenEmpty::Release);
        assert!(p.cover_after_receipt(true));
    }

    #[test]
    fn without_protection_nothing_is_asked() {
        for mode in [ProtectMode::BeforeReceive, ProtectMode::OnReceipt] {
            let mut p = ProtectPolicy::new(mode, false);
            assert!(!p.cover_receive(true, false));
            assert_eq!(p.when_empty(), WhenEmpty::Nothing);
            assert!(!p.cover_after_receipt(false));
        }
    }
}
