//! The candidates buffer: one union-space accumulator, allocated once per generation, and the
//! list of tokens still in the running that the stages narrow.

use crate::combine::scatter_add;
use crate::constraint::is_allowed;

/// Probabilities below this are left out of a member's head (see [`crate::combine::softmax`]).
pub const HEAD_FLOOR: f32 = 1e-4;

/// One member's distribution as the scatter reads it.
#[derive(Debug, Clone, Copy)]
pub struct MemberInput<'a> {
    /// Probabilities over the member's vocabulary (zero outside the head when the member
    /// handed back only its head).
    pub probs: &'a [f32],
    /// The ids that can decide a greedy pick: every id more probable than `floor`.
    pub head: &'a [u32],
    /// No id outside the head is more probable than this: [`HEAD_FLOOR`] for a whole
    /// distribution, the least probable listed id for a member's own head.
    pub floor: f32,
    /// Whether `probs` is the whole distribution; false when only the head is known.
    pub full: bool,
    /// The most mass the ids outside the head hold together: infinite for a whole distribution
    /// (each of them is below `floor`, which is tiny), what a head alone leaves of 1.
    pub outside: f32,
    /// Member id → union id (special tokens → `sink`).
    pub projection: &'a [u32],
    /// The member's weight in this step (the weights of a step sum to 1).
    pub weight: f32,
    /// The most member ids that map to one union token.
    pub max_fold: usize,
    /// How many member ids map to each union token.
    pub folds: &'a [u16],
}

impl MemberInput<'_> {
    /// The most weighted mass a union token can gain from `missing` of this member's ids that
    /// map to it but are outside the head.
    fn gain(&self, missing: usize) -> f32 {
        self.weight * (self.floor * missing as f32).min(self.outside)
    }

    /// How many of the member's ids that map to union token `u` are outside its head.
    fn missing(&self, u: u32) -> usize {
        let listed = self
            .head
            .iter()
            .filter(|&&j| self.projection[j as usize] == u)
            .count();
        usize::from(self.folds[u as usize]).saturating_sub(listed)
    }
}

/// What a scatter left in the candidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filled {
    /// Candidates with mass.
    Mass,
    /// No token got any mass.
    Empty,
    /// The heads do not decide the greedy pick and a member gave only its head: its whole
    /// distribution is needed.
    NeedsFull,
}

/// How the members' distributions enter the candidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scatter {
    /// Every token of every member, weighted (paper Eq. 3); of a member that gave only its
    /// head, the head.
    Full,
    /// Only the heads, when they prove which token is the full distribution's argmax (greedy
    /// picks only); otherwise [`Scatter::Full`].
    Heads,
    /// Each member's k most probable writable tokens (the top-k union); [`Scatter::Full`] when
    /// no member has one. A member that gave a head of fewer than k ids gives its whole
    /// distribution for the step ([`Filled::NeedsFull`]): its k most probable are not known.
    TopK(usize),
    /// Every token of every member, weighted; a member that gave only its head gives its whole
    /// distribution for the step ([`Filled::NeedsFull`]). The candidates then hold the whole
    /// combined distribution, whatever kind the members are (to report it after a greedy pick
    /// decided on the heads).
    Whole,
}

impl Scatter {
    /// Whether member `m` must give its whole distribution when this scatter answered
    /// [`Filled::NeedsFull`]: for the top-k union, a head of fewer than k ids (of a vocabulary
    /// that has more); otherwise any head, since the heads together did not decide.
    pub fn needs_whole(self, m: &MemberInput) -> bool {
        match self {
            Scatter::TopK(k) => !m.full && m.head.len() < k.min(m.probs.len()),
            Scatter::Full | Scatter::Heads | Scatter::Whole => !m.full,
        }
    }
}

/// The tokens of one step and their (unnormalized) mass; see the module doc.
#[derive(Debug)]
pub struct Candidates {
    /// Union-space mass (plus the sink slot); all zero between steps.
    acc: Vec<f32>,
    /// Union ids with mass in `acc`, when only some were written.
    touched: Vec<u32>,
    /// Every slot of `acc` may have been written (by a full scatter) since the last clear.
    written_all: bool,
    /// (mass, union id) of the tokens still in the running.
    list: Vec<(f32, u32)>,
    /// Whether `list` is in [`descending`] order.
    sorted: bool,
    /// A member's top-k, for the top-k union.
    top: Vec<(f32, u32)>,
    /// The union ids a grammar allows at this step, as a bitset; empty when unconstrained.
    allowed: Vec<u32>,
    union_len: usize,
}

/// Descending mass; on equal mass the lower union id first. The one order (and tie rule) of
/// every ranking in the selection.
pub fn descending(a: &(f32, u32), b: &(f32, u32)) -> std::cmp::Ordering {
    b.0.total_cmp(&a.0).then(a.1.cmp(&b.1))
}

/// The index of the largest value, the lowest index on ties (the rule of [`descending`]), as a
/// plain loop; `None` for no values or only NaN.
pub fn argmax(values: &[f32]) -> Option<usize> {
    let (mut at, mut best) = (None, f32::NEG_INFINITY);
    for (i, &v) in values.iter().enumerate() {
        if v > best {
            (at, best) = (Some(i), v);
        }
    }
    // Nothing above -inf: the first value that is not NaN.
    at.or_else(|| values.iter().position(|v| !v.is_nan()))
}

impl Candidates {
    /// A buffer for a union of `union_len` tokens (the sink slot is added).
    pub fn new(union_len: usize) -> Self {
        Self {
            acc: vec![0.0; union_len + 1],
            touched: Vec::new(),
            written_all: false,
            list: Vec::new(),
            sorted: false,
            top: Vec::new(),
            allowed: Vec::new(),
            union_len,
        }
    }

    /// Restricts every later scatter to the union ids set in `allowed` (a bitset, bit `u % 32`
    /// of word `u / 32`, as a grammar gives it; empty lifts the restriction). A
    /// restricted scatter works as if the other tokens had no mass: heads decide a greedy pick
    /// among the allowed tokens; the top-k union takes each member's k most probable allowed
    /// tokens above [`HEAD_FLOOR`] (a member that gave only a head with fewer allowed ones
    /// gives its whole distribution); a draw over heads draws among their allowed tokens, and
    /// a head with none gives way to the whole distribution.
    pub fn restrict(&mut self, allowed: &[u32]) {
        self.allowed.clear();
        self.allowed.extend_from_slice(allowed);
    }

    /// Under a restriction, whether member `m` gave only a head holding fewer than `k` allowed
    /// tokens: its k most probable allowed tokens are then not known.
    fn short_of_allowed(&self, m: &MemberInput, k: usize) -> bool {
        let allowed = || {
            (m.head.iter())
                .filter(|&&j| self.admits(m.projection[j as usize]))
                .count()
        };
        self.restricted() && !m.full && allowed() < k.min(m.probs.len())
    }

    /// Whether union id `u` may enter (always, unless restricted).
    fn admits(&self, u: u32) -> bool {
        !self.restricted() || is_allowed(&self.allowed, u)
    }

    /// Zeroes the dense buffer's tokens outside the restriction.
    fn zero_disallowed(&mut self) {
        if !self.restricted() {
            return;
        }
        for (w, chunk) in self.acc[..self.union_len].chunks_mut(32).enumerate() {
            let bits = self.allowed.get(w).copied().unwrap_or(0);
            if bits == u32::MAX {
                continue;
            }
            for (b, slot) in chunk.iter_mut().enumerate() {
                if bits & (1 << b) == 0 {
                    *slot = 0.0;
                }
            }
        }
    }

    /// Fills the candidates from the members' distributions.
    pub fn scatter(&mut self, how: Scatter, members: &[MemberInput]) -> Filled {
        self.clear();
        let sparse = match how {
            Scatter::Full => false,
            Scatter::Whole if members.iter().any(|m| !m.full) => return Filled::NeedsFull,
            Scatter::Whole => false,
            Scatter::Heads => self.heads_decide(members),
            Scatter::TopK(k)
                if members
                    .iter()
                    .any(|m| how.needs_whole(m) || self.short_of_allowed(m, k)) =>
            {
                return Filled::NeedsFull
            }
            Scatter::TopK(k) => self.top_k_union(members, k),
        };
        if !sparse {
            if how == Scatter::Heads && members.iter().any(|m| !m.full) {
                return Filled::NeedsFull;
            }
            self.clear();
            for m in members {
                match m.full {
                    true => scatter_add(&mut self.acc, m.projection, m.probs, m.weight),
                    false => self.add_head(m),
                }
            }
            self.zero_disallowed();
            self.written_all = true;
        }
        let restricted = self.restricted();
        let mass = match self.written_all {
            true => !restricted || self.acc[..self.union_len].iter().any(|&p| p > 0.0),
            false => !self.list.is_empty(),
        };
        match mass {
            true => Filled::Mass,
            // The heads hold no allowed token: the allowed ones are in the rest.
            false if restricted && members.iter().any(|m| !m.full) => Filled::NeedsFull,
            false => Filled::Empty,
        }
    }

    /// The largest mass and the total mass of the candidates, in one pass (no sort).
    pub fn best_and_total(&self) -> (f32, f32) {
        let fold = |(best, total): (f32, f32), p: f32| (best.max(p), total + p);
        match self.dense() {
            true => self.acc[..self.union_len]
                .iter()
                .copied()
                .fold((0.0, 0.0), fold),
            false => self.list.iter().map(|x| x.0).fold((0.0, 0.0), fold),
        }
    }

    /// The mass the scatter gave special tokens (which are never candidates) where it wrote
    /// whole distributions and no restriction is in force; else 0 (it is not known).
    pub fn special_mass(&self) -> f32 {
        match self.written_all && !self.restricted() {
            true => self.acc[self.union_len],
            false => 0.0,
        }
    }

    /// Whether a restriction is in force (see [`Candidates::restrict`]).
    pub fn restricted(&self) -> bool {
        !self.allowed.is_empty()
    }

    /// Adds a member's weighted head (special tokens to the sink, as in a full scatter).
    fn add_head(&mut self, m: &MemberInput) {
        for &j in m.head {
            self.acc[m.projection[j as usize] as usize] += m.weight * m.probs[j as usize];
        }
    }

    /// The candidates are the whole dense buffer, not (yet) a list.
    fn dense(&self) -> bool {
        self.written_all && self.list.is_empty()
    }

    /// The tokens still in the running, as (mass, union id); built from the dense buffer on
    /// first use.
    pub fn list(&mut self) -> &mut Vec<(f32, u32)> {
        if self.dense() {
            let acc = &self.acc[..self.union_len];
            self.list.extend(
                acc.iter()
                    .enumerate()
                    .filter(|(_, &p)| p > 0.0)
                    .map(|(i, &p)| (p, i as u32)),
            );
        }
        &mut self.list
    }

    /// The list in [`descending`] order.
    pub fn sorted(&mut self) -> &mut Vec<(f32, u32)> {
        if !self.sorted {
            self.list().sort_unstable_by(descending);
            self.sorted = true;
        }
        &mut self.list
    }

    /// The `n` most probable tokens in [`descending`] order, without sorting the rest of the
    /// list (left in no order, unless it was sorted).
    pub fn top(&mut self, n: usize) -> &[(f32, u32)] {
        if !self.sorted {
            let list = self.list();
            let n = n.min(list.len());
            if n < list.len() {
                list.select_nth_unstable_by(n, descending);
            }
            list[..n].sort_unstable_by(descending);
        }
        let n = n.min(self.list.len());
        &self.list[..n]
    }

    /// The mass the scatter gave union token `u` (stages do not change it).
    pub fn mass(&self, u: u32) -> f32 {
        self.acc[u as usize]
    }

    /// Marks the list as reordered (a stage moved entries).
    pub fn unsorted(&mut self) {
        self.sorted = false;
    }

    /// The most massive token (the lower union id on ties, as in [`descending`]), if any has
    /// mass.
    pub fn best(&self) -> Option<u32> {
        if self.dense() {
            let acc = &self.acc[..self.union_len];
            return argmax(acc).filter(|&i| acc[i] > 0.0).map(|i| i as u32);
        }
        match self.sorted {
            true => self.list.first(),
            false => self.list.iter().min_by(|a, b| descending(a, b)),
        }
        .filter(|x| x.0 > 0.0)
        .map(|x| x.1)
    }

    /// Zeroes what the last step wrote.
    fn clear(&mut self) {
        if self.written_all {
            self.acc.fill(0.0);
        } else {
            for &u in &self.touched {
                self.acc[u as usize] = 0.0;
            }
        }
        self.touched.clear();
        self.list.clear();
        self.written_all = false;
        self.sorted = false;
    }

    /// Adds `mass` to union token `u` (never the sink; nothing outside the restriction),
    /// remembering which were written.
    fn add(&mut self, u: u32, mass: f32) {
        if mass > 0.0 && self.admits(u) {
            let slot = &mut self.acc[u as usize];
            if *slot == 0.0 {
                self.touched.push(u);
            }
            *slot += mass;
        }
    }

    /// The top-k union: each member's k most probable tokens that can be written (special
    /// tokens carry no mass and take no place). False when no member has one.
    fn top_k_union(&mut self, members: &[MemberInput], k: usize) -> bool {
        let sink = self.union_len as u32;
        for m in members {
            let mut top = std::mem::take(&mut self.top);
            top.clear();
            top.extend(
                m.head
                    .iter()
                    .filter(|&&j| {
                        let u = m.projection[j as usize];
                        u != sink && self.admits(u)
                    })
                    .map(|&j| (m.probs[j as usize], j)),
            );
            if top.len() > k {
                top.select_nth_unstable_by(k - 1, descending);
                top.truncate(k);
            }
            for &(p, j) in &top {
                self.add(m.projection[j as usize], m.weight * p);
            }
            self.top = top;
        }
        let acc = &self.acc;
        self.list
            .extend(self.touched.iter().map(|&u| (acc[u as usize], u)));
        !self.list.is_empty()
    }

    /// Greedy on the heads alone: true (with the winner as the only candidate) when its margin
    /// over the runner-up exceeds what the tokens outside the heads could add, so it is the
    /// argmax of the full distributions.
    fn heads_decide(&mut self, members: &[MemberInput]) -> bool {
        let sink = self.union_len as u32;
        for m in members {
            for &j in m.head {
                let u = m.projection[j as usize];
                if u != sink {
                    self.add(u, m.weight * m.probs[j as usize]);
                }
            }
        }
        let best = self
            .touched
            .iter()
            .map(|&u| (self.acc[u as usize], u))
            .min_by(descending)
            .unwrap_or((0.0, 0));
        // A token outside every head gains at most `uniform` from the ids left out.
        let uniform: f32 = members.iter().map(|m| m.gain(m.max_fold)).sum();
        if best.0 <= uniform {
            return false;
        }
        // A rival that could reach the best with that much gets its own bound: only its ids
        // outside each head can add to it.
        for &u in &self.touched {
            let mass = self.acc[u as usize];
            if u == best.1 || mass + uniform < best.0 {
                continue;
            }
            let gain: f32 = members.iter().map(|m| m.gain(m.missing(u))).sum();
            if mass + gain >= best.0 {
                return false;
            }
        }
        self.list.push(best);
        self.sorted = true;
        true
    }
}
