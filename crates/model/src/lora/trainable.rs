//! The adapter as candle `Var`s, so the SDPO step can differentiate a forward pass with
//! respect to its A/B matrices and write the updated weights back as a [`LoraAdapter`].

use candle_core::Var;

use super::adapter::{empty_layers, LoraAdapter, LoraPair};
use super::peft_config::LoraConfig;
use super::{Module, ALL_MODULES};
use crate::Result;

/// An adapter whose A/B matrices are candle `Var`s, for gradient descent.
#[derive(Debug, Clone)]
pub struct TrainableLora {
    config: LoraConfig,
    num_layers: usize,
    /// (layer, module, A, B, scale)
    entries: Vec<(usize, Module, Var, Var, f64)>,
}

impl TrainableLora {
    /// Copies an adapter's weights into fresh variables (f32 or f64, as the adapter is).
    pub fn from_adapter(adapter: &LoraAdapter) -> Result<Self> {
        let mut entries = Vec::new();
        for (l, slots) in adapter.layers.iter().enumerate() {
            for m in ALL_MODULES {
                if let Some(p) = &slots[m.index()] {
                    entries.push((
                        l,
                        m,
                        Var::from_tensor(&p.a.copy()?)?,
                        Var::from_tensor(&p.b.copy()?)?,
                        p.scale,
                    ));
                }
            }
        }
        Ok(TrainableLora {
            config: adapter.config.clone(),
            num_layers: adapter.layers.len(),
            entries,
        })
    }

    /// An adapter view whose tensors are these variables, so a forward through it is
    /// differentiable with respect to them.
    pub fn adapter(&self) -> LoraAdapter {
        let mut layers = empty_layers(self.num_layers);
        for (l, m, a, b, s) in &self.entries {
            layers[*l][m.index()] = Some(LoraPair {
                a: a.as_tensor().clone(),
                b: b.as_tensor().clone(),
                scale: *s,
            });
        }
        LoraAdapter {
            config: self.config.clone(),
            layers,
        }
    }

    /// The variables under their PEFT keys (A then B for each module, layer-major order).
    pub fn named_vars(&self) -> Vec<(String, &Var)> {
        let mut out = Vec::with_capacity(self.entries.len() * 2);
        for (l, m, a, b, _) in &self.entries {
            out.push((m.peft_key(*l, 'A'), a));
            out.push((m.peft_key(*l, 'B'), b));
        }
        out
    }

    /// A detached snapshot of the current weights.
    pub fn snapshot(&self) -> Result<LoraAdapter> {
        let mut layers = empty_layers(self.num_layers);
        for (l, m, a, b, s) in &self.entries {
            layers[*l][m.index()] = Some(LoraPair {
                a: a.as_tensor().detach().copy()?,
                b: b.as_tensor().detach().copy()?,
                scale: *s,
            });
        }
        Ok(LoraAdapter {
            config: self.config.clone(),
            layers,
        })
    }
}
