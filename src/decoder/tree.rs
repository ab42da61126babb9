//! Candidate trees: several guesses per position, verified in one call with a tree attention
//! mask (Medusa's tree attention). The root is the model's own next token; the children of
//! every node at depth `d` are the top `widths[d]` candidates of proposal head `d`.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Most nodes a tree may have (the root excluded): one verify call scores them all.
pub const MAX_TREE_NODES: usize = 512;

/// How wide a candidate tree is at each depth: `[3, 2, 1]` branches on the top 3 candidates of
/// the first head, under each of them the top 2 of the second head, then the top 1 of the third
/// (3 + 6 + 6 = 15 nodes). `[1, 1, 1]` is a chain of three. Written `3,2,1` on the command line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<usize>", into = "Vec<usize>")]
pub struct TreeShape {
    widths: Vec<usize>,
}

impl TreeShape {
    /// Checks the widths: at least one depth, every width at least 1, at most
    /// [`MAX_TREE_NODES`] nodes.
    pub fn new(widths: Vec<usize>) -> Result<Self> {
        if widths.is_empty() {
            return Err(Error::config("tree", "needs at least one depth"));
        }
        if let Some(d) = widths.iter().position(|&w| w == 0) {
            return Err(Error::config(
                "tree",
                format!(
                    "width at depth {} is 0; every depth needs at least 1",
                    d + 1
                ),
            ));
        }
        let shape = TreeShape { widths };
        if shape.nodes() > MAX_TREE_NODES {
            return Err(Error::config(
                "tree",
                format!(
                    "{shape} has {} nodes; at most {MAX_TREE_NODES} fit one call",
                    shape.nodes()
                ),
            ));
        }
        Ok(shape)
    }

    /// A chain of `depth` single candidates: what a block of `depth + 1` verifies.
    pub fn chain(depth: usize) -> Result<Self> {
        TreeShape::new(vec![1; depth])
    }

    /// Widths, depth by depth.
    pub fn widths(&self) -> &[usize] {
        &self.widths
    }

    /// Depths (proposal heads read).
    pub fn depth(&self) -> usize {
        self.widths.len()
    }

    /// Nodes, the root excluded. Saturates instead of overflowing.
    pub fn nodes(&self) -> usize {
        let mut level = 1usize;
        let mut total = 0usize;
        for &w in &self.widths {
            level = level.saturating_mul(w);
            total = total.saturating_add(level);
        }
        total
    }
}

impl TryFrom<Vec<usize>> for TreeShape {
    type Error = Error;
    fn try_from(widths: Vec<usize>) -> Result<Self> {
        TreeShape::new(widths)
    }
}

impl From<TreeShape> for Vec<usize> {
    fn from(shape: TreeShape) -> Self {
        shape.widths
    }
}

impl std::fmt::Display for TreeShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.widths.iter().map(|w| w.to_string()).collect();
        f.write_str(&parts.join(","))
    }
}

impl std::str::FromStr for TreeShape {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let widths = s
            .split(',')
            .map(|w| {
                w.trim().parse().map_err(|_| {
                    Error::config(
                        "tree",
                        format!("`{s}` is not a list of widths such as 3,2,1"),
                    )
                })
            })
            .collect::<Result<Vec<usize>>>()?;
        TreeShape::new(widths)
    }
}

/// A tree of guesses a proposer builds under the base model's next token (the root, which is
/// not part of it): `tokens[i]` hangs under `parents[i]`, where `0` is the root and `j + 1` is
/// node `j`; every node's parent comes before it. Verified in one call with a tree attention
/// mask, and the longest branch the model agrees with is kept.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DraftTree {
    /// The nodes' tokens.
    pub tokens: Vec<i64>,
    /// Each node's parent: `0` for the root, `j + 1` for node `j < i`.
    pub parents: Vec<usize>,
}

impl DraftTree {
    /// A chain: each token under the one before.
    pub fn chain(tokens: &[i64]) -> Self {
        DraftTree {
            tokens: tokens.to_vec(),
            parents: (0..tokens.len()).collect(),
        }
    }

    /// Nodes (the root excluded).
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether the tree holds no node.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

/// A block laid out as a tree, nodes in breadth-first order: node 0 is the root, every other
/// node's parent comes before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TokenTree {
    pub(crate) tokens: Vec<i64>,
    pub(crate) parents: Vec<usize>,
    pub(crate) depths: Vec<usize>,
}

impl TokenTree {
    /// `root` followed by `tokens`, each the child of the one before.
    pub(crate) fn chain(root: i64, tokens: &[i64]) -> Self {
        let n = tokens.len() + 1;
        TokenTree {
            tokens: std::iter::once(root)
                .chain(tokens.iter().copied())
                .collect(),
            parents: (0..n).map(|i| i.saturating_sub(1)).collect(),
            depths: (0..n).collect(),
        }
    }

    /// The product tree: under every node at depth `d` (for `d < depth`), the first
    /// `widths[d]` of `candidates[d]` (ranked, distinct). Nodes for which `stop` holds (an
    /// end-of-sequence token) get no children.
    pub(crate) fn product(
        root: i64,
        candidates: &[Vec<i64>],
        widths: &[usize],
        depth: usize,
        stop: impl Fn(i64) -> bool,
    ) -> Self {
        let mut tree = TokenTree::chain(root, &[]);
        let mut level = vec![0usize];
        for (d, (cands, &w)) in candidates.iter().zip(widths).take(depth).enumerate() {
            let mut next_level = Vec::new();
            for &parent in &level {
                if stop(tree.tokens[parent]) {
                    continue;
                }
                for &t in cands.iter().take(w) {
                    next_level.push(tree.tokens.len());
                    tree.tokens.push(t);
                    tree.parents.push(parent);
                    tree.depths.push(d + 1);
                }
            }
            level = next_level;
        }
        tree
    }

    /// `root` with the proposer's `tree` under it, checked: parents before children; nodes
    /// deeper than `max_depth`, beyond `max_nodes`, or under a node for which `stop` holds
    /// (an end-of-sequence token) are dropped with everything under them.
    pub(crate) fn from_draft(
        root: i64,
        tree: &DraftTree,
        max_depth: usize,
        max_nodes: usize,
        stop: impl Fn(i64) -> bool,
    ) -> Result<Self> {
        if tree.parents.len() != tree.tokens.len() {
            return Err(Error::Contract {
                component: "proposer",
                problem: format!(
                    "a draft tree of {} tokens with {} parents",
                    tree.tokens.len(),
                    tree.parents.len()
                ),
            });
        }
        let mut out = TokenTree::chain(root, &[]);
        // Where each draft node landed (0 for the root), or None when dropped.
        let mut placed: Vec<Option<usize>> = Vec::with_capacity(tree.len() + 1);
        placed.push(Some(0));
        for (i, (&token, &parent)) in tree.tokens.iter().zip(&tree.parents).enumerate() {
            if parent > i {
                return Err(Error::Contract {
                    component: "proposer",
                    problem: format!(
                        "draft tree node {i} hangs under node {parent}, not before it"
                    ),
                });
            }
            let at = placed[parent].filter(|&p| {
                out.depths[p] < max_depth && out.len() <= max_nodes && !stop(out.tokens[p])
            });
            placed.push(at.map(|p| {
                out.tokens.push(token);
                out.parents.push(p);
                out.depths.push(out.depths[p] + 1);
                out.tokens.len() - 1
            }));
        }
        Ok(out)
    }

    pub(crate) fn len(&self) -> usize {
        self.tokens.len()
    }

    /// The nodes under the root, as a [`DraftTree`] (the form proposers see).
    pub(crate) fn as_draft(&self) -> DraftTree {
        DraftTree {
            tokens: self.tokens[1..].to_vec(),
            parents: self.parents[1..].to_vec(),
        }
    }

    /// Whether node `i` may attend node `j`: `j` is `i` or one of its ancestors.
    pub(crate) fn sees(&self, i: usize, j: usize) -> bool {
        let mut n = i;
        loop {
            if n == j {
                return true;
            }
            if n == 0 || n < j {
                return false;
            }
            n = self.parents[n];
        }
    }

    /// Greedy verification: from the root, follow the child whose token is the model's argmax
    /// after the current node (`argmax[node]`) while there is one. Returns the path's nodes.
    pub(crate) fn walk(&self, argmax: &[i64]) -> Vec<usize> {
        let mut path = vec![0];
        let mut node = 0;
        while let Some(child) = (node + 1..self.len())
            .find(|&c| self.parents[c] == node && self.tokens[c] == argmax[node])
        {
            path.push(child);
            node = child;
        }
        path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_parse_count_and_refuse() {
        let s: TreeShape = "3,2,1".parse().unwrap();
        assert_eq!(s.nodes(), 3 + 6 + 6);
        assert_eq!(s.depth(), 3);
        assert_eq!(s.to_string(), "3,2,1");
        assert_eq!(TreeShape::chain(4).unwrap().nodes(), 4);
        for bad in ["", "3,0", "a,b", "64,64"] {
            assert!(matches!(
                bad.parse::<TreeShape>(),
                Err(Error::InvalidConfig { .. })
            ));
        }
        let json: TreeShape = serde_json::from_str("[2,2]").unwrap();
        assert_eq!(json.nodes(), 6);
        assert!(serde_json::from_str::<TreeShape>("[]").is_err());
    }

    #[test]
    fn product_tree_masks_and_walks() {
        // root 9; head 0 candidates [1, 2], head 1 candidates [3, 4].
        let t = TokenTree::product(9, &[vec![1, 2], vec![3, 4]], &[2, 2], 2, |_| false);
        assert_eq!(t.tokens, vec![9, 1, 2, 3, 4, 3, 4]);
        assert_eq!(t.parents, vec![0, 0, 0, 1, 1, 2, 2]);
        assert_eq!(t.depths, vec![0, 1, 1, 2, 2, 2, 2]);
        assert!(t.sees(5, 2) && t.sees(5, 0) && t.sees(5, 5));
        assert!(!t.sees(5, 1) && !t.sees(3, 4) && !t.sees(1, 2));
        // The model's argmax after each node: after 9 comes 2, after 2 comes 4, after 4 comes 7.
        let argmax = vec![2, 0, 4, 0, 0, 0, 7];
        assert_eq!(t.walk(&argmax), vec![0, 2, 6]);
        // An end-of-sequence token gets no children.
        let t = TokenTree::product(9, &[vec![1, 2], vec![3]], &[2, 1], 2, |x| x == 1);
        assert_eq!(t.tokens, vec![9, 1, 2, 3]);
        assert_eq!(t.parents, vec![0, 0, 0, 2]);
        // Depth is capped by what the block may hold.
        let t = TokenTree::product(9, &[vec![1, 2], vec![3]], &[2, 1], 1, |_| false);
        assert_eq!(t.len(), 3);
        let c = TokenTree::chain(5, &[6, 7]);
        assert_eq!(c.walk(&[6, 7, 8]), vec![0, 1, 2]);
        assert_eq!(c.walk(&[6, 1, 8]), vec![0, 1]);
    }

    #[test]
    fn draft_trees_are_checked_and_cut() {
        // root 9; nodes: 1 and 2 under the root, 3 under node 0 (token 1), 4 under node 2.
        let d = DraftTree {
            tokens: vec![1, 2, 3, 4],
            parents: vec![0, 0, 1, 3],
        };
        let t = TokenTree::from_draft(9, &d, 8, 8, |_| false).unwrap();
        assert_eq!(t.tokens, vec![9, 1, 2, 3, 4]);
        assert_eq!(t.parents, vec![0, 0, 0, 1, 3]);
        assert_eq!(t.depths, vec![0, 1, 1, 2, 3]);
        // Depth 2 at most: node 3 (depth 3) goes.
        let t = TokenTree::from_draft(9, &d, 2, 8, |_| false).unwrap();
        assert_eq!(t.tokens, vec![9, 1, 2, 3]);
        // Two nodes at most.
        let t = TokenTree::from_draft(9, &d, 8, 2, |_| false).unwrap();
        assert_eq!(t.tokens, vec![9, 1, 2]);
        // Nothing under an end-of-sequence token: token 1's subtree goes.
        let t = TokenTree::from_draft(9, &d, 8, 8, |x| x == 1).unwrap();
        assert_eq!(t.tokens, vec![9, 1, 2]);
        // A node under a later node, and parents that do not match the tokens, are errors.
        let bad = DraftTree {
            tokens: vec![1, 2],
            parents: vec![2, 0],
        };
        assert!(matches!(
            TokenTree::from_draft(9, &bad, 8, 8, |_| false),
            Err(Error::Contract { .. })
        ));
        let bad = DraftTree {
            tokens: vec![1, 2],
            parents: vec![0],
        };
        assert!(TokenTree::from_draft(9, &bad, 8, 8, |_| false).is_err());
        assert_eq!(DraftTree::chain(&[4, 5]).parents, vec![0, 1]);
    }
}
