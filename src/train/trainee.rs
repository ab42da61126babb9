//! What the heads trainer needs from a model: final hidden states for whole sequences, the
//! vocabulary projection, the heads and their variables. Implemented for the built-in
//! [`Transformer`] (whose base can also be fine-tuned) and for [`WithHeads`] over any model
//! (frozen base).

use tch::{nn, Kind, Tensor};

use crate::error::{Error, Result};
use crate::heads::{ProposalHeads, WithHeads};
use crate::model::CausalLm;
use crate::transformer::Transformer;

/// A model whose proposal heads [`train_heads`](super::train_heads) can train.
pub trait HeadsTrainee {
    /// Final hidden states `[B, T, D]` of whole sequences `tokens` (`[B, T]`, from position
    /// 0), with gradients through the base when `train_base`.
    fn hidden_states(&mut self, tokens: &Tensor, train_base: bool) -> Result<Tensor>;
    /// The base's next-token logits from hidden states (for the fine-tuning loss).
    fn lm_logits(&self, hidden: &Tensor) -> Result<Tensor>;
    /// The proposal heads.
    fn heads(&self) -> &ProposalHeads;
    /// Head states `[N, H, D]` -> logits over the heads' vocabulary `[N, H, V']`; the
    /// projection gets gradients only when `train_base`.
    fn project(&self, states: &Tensor, train_base: bool) -> Result<Tensor>;
    /// Maps vocabulary ids to columns of [`HeadsTrainee::project`] (`-100`: not scored), when
    /// the heads score a shortlist.
    fn target_map(&self) -> Option<&Tensor>;
    /// Every variable a checkpoint saves.
    fn var_store(&self) -> &nn::VarStore;
    /// Whether `name` (a variable of [`HeadsTrainee::var_store`]) belongs to the heads.
    fn is_head_var(&self, name: &str) -> bool;
    /// Whether the base model's weights can be trained too.
    fn can_train_base(&self) -> bool;
    /// The model as a decoder sees it (heads included), for validation.
    fn as_lm(&mut self) -> &mut dyn CausalLm;
}

fn no_heads() -> Error {
    Error::MissingCapability {
        component: "the heads trainer",
        capability: "proposal heads (num_proposal_heads > 0)",
    }
}

impl HeadsTrainee for Transformer {
    fn hidden_states(&mut self, tokens: &Tensor, train_base: bool) -> Result<Tensor> {
        if train_base {
            return self.forward_sequences(tokens)?.hidden.ok_or_else(no_heads);
        }
        let _guard = tch::no_grad_guard();
        let hidden = self
            .forward_sequences(tokens)?
            .hidden
            .ok_or_else(no_heads)?;
        Ok(hidden.f_detach()?)
    }

    fn lm_logits(&self, hidden: &Tensor) -> Result<Tensor> {
        self.logits(hidden)
    }

    fn heads(&self) -> &ProposalHeads {
        Transformer::heads(self).expect("checked by train_heads")
    }

    fn project(&self, states: &Tensor, train_base: bool) -> Result<Tensor> {
        if train_base {
            return self.logits(states);
        }
        let emb = self.embedding_matrix().f_detach()?;
        Ok(states.f_matmul(&emb.f_transpose(0, 1)?)?)
    }

    fn target_map(&self) -> Option<&Tensor> {
        None
    }

    fn var_store(&self) -> &nn::VarStore {
        Transformer::var_store(self)
    }

    fn is_head_var(&self, name: &str) -> bool {
        name.starts_with("heads.")
    }

    fn can_train_base(&self) -> bool {
        true
    }

    fn as_lm(&mut self) -> &mut dyn CausalLm {
        self
    }
}

impl<M: CausalLm> HeadsTrainee for WithHeads<M> {
    fn hidden_states(&mut self, tokens: &Tensor, train_base: bool) -> Result<Tensor> {
        if train_base {
            return Err(Error::config(
                "train_base",
                "the base of attached heads is frozen; only the built-in transformer fine-tunes",
            ));
        }
        let _guard = tch::no_grad_guard();
        let (b, _) = tokens.size2()?;
        let mut rows = Vec::with_capacity(b as usize);
        for i in 0..b {
            let row = tokens.f_narrow(0, i, 1)?;
            self.base_mut().truncate(0)?;
            let out = self.base_mut().forward(&row, 0)?;
            let hidden = out.hidden.ok_or(Error::MissingCapability {
                component: "the heads trainer",
                capability: "final hidden states from the base model",
            })?;
            rows.push(hidden.f_to_kind(Kind::Float)?);
        }
        self.base_mut().truncate(0)?;
        Ok(Tensor::f_cat(&rows, 0)?)
    }

    fn lm_logits(&self, _hidden: &Tensor) -> Result<Tensor> {
        Err(Error::config(
            "train_base",
            "the base of attached heads is frozen",
        ))
    }

    fn heads(&self) -> &ProposalHeads {
        WithHeads::heads(self)
    }

    fn project(&self, states: &Tensor, _train_base: bool) -> Result<Tensor> {
        WithHeads::project(self, states)
    }

    fn target_map(&self) -> Option<&Tensor> {
        WithHeads::target_map(self)
    }

    fn var_store(&self) -> &nn::VarStore {
        WithHeads::var_store(self)
    }

    fn is_head_var(&self, _name: &str) -> bool {
        true
    }

    fn can_train_base(&self) -> bool {
        false
    }

    fn as_lm(&mut self) -> &mut dyn CausalLm {
        self
    }
}
