//! Lengthen after full acceptance, shorten after a rejection.

use super::{BlockOutcome, BlockPolicy};
use crate::error::{Error, Result};

/// Adapts the number of proposals to how well they have been doing: after a block whose
/// proposals were all accepted it allows `grow` more (up to the limit), after a block with a
/// rejection it allows one more than were accepted, but never fewer than `min` nor fewer than
/// `current - shrink`. Starts at the full limit.
///
/// ```
/// use blockwise::policy::{Adaptive, BlockOutcome, BlockPolicy};
/// let mut p = Adaptive::default();
/// assert_eq!(p.allow(7), 7);
/// p.observe(&BlockOutcome::new(7, 7, 0)); // all rejected: shrink
/// assert_eq!(p.allow(7), 5);
/// p.observe(&BlockOutcome::new(5, 5, 5)); // all accepted: grow
/// assert_eq!(p.allow(7), 7);
/// ```
#[derive(Debug, Clone)]
pub struct Adaptive {
    min: usize,
    grow: usize,
    shrink: usize,
    current: Option<usize>,
}

impl Default for Adaptive {
    fn default() -> Self {
        Adaptive {
            min: 1,
            grow: 2,
            shrink: 2,
            current: None,
        }
    }
}

impl Adaptive {
    /// At least `min` proposals; `grow` more after full acceptance; at most `shrink` fewer
    /// after a rejection. `grow` and `shrink` must be at least 1.
    pub fn new(min: usize, grow: usize, shrink: usize) -> Result<Self> {
        if grow == 0 || shrink == 0 {
            return Err(Error::config(
                "adaptive",
                format!("grow and shrink must be at least 1, got {grow} and {shrink}"),
            ));
        }
        Ok(Adaptive {
            min,
            grow,
            shrink,
            current: None,
        })
    }
}

impl BlockPolicy for Adaptive {
    fn begin(&mut self) {
        self.current = None;
    }

    fn allow(&mut self, limit: usize) -> usize {
        let n = self
            .current
            .unwrap_or(limit)
            .clamp(self.min.min(limit), limit);
        self.current = Some(n);
        n
    }

    fn observe(&mut self, o: &BlockOutcome) {
        if o.proposed == 0 {
            return; // the proposer had nothing: no evidence either way
        }
        let current = self.current.unwrap_or(o.allowed);
        let next = if o.accepted == o.proposed {
            if o.proposed < o.allowed {
                current // the proposer ran out, not the block
            } else {
                current + self.grow
            }
        } else {
            (o.accepted + 1).max(current.saturating_sub(self.shrink))
        };
        self.current = Some(next.max(self.min));
    }
}
