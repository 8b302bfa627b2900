//! AdamW on flattened tensors, with global-norm gradient clipping.

use std::collections::BTreeMap;

use burn::prelude::*;
use burn::tensor::Gradients;

/// A trained tensor: a student linear's latent weights (`M`), its scales (`S`), or an RMSNorm
/// weight (`N`, with `--train-norms`).
#[derive(Debug)]
pub(crate) enum ParamRef<'a> {
    M(&'a mut Tensor<2>),
    S(&'a mut Tensor<3>),
    N(&'a mut Tensor<1>),
}

impl ParamRef<'_> {
    fn numel(&self) -> usize {
        match self {
            ParamRef::M(t) => t.dims().iter().product(),
            ParamRef::S(t) => t.dims().iter().product(),
            ParamRef::N(t) => t.dims()[0],
        }
    }

    /// The gradient, flattened (zeros when the tensor took no part in the loss).
    fn grad_flat(&self, grads: &Gradients) -> Tensor<1> {
        let n = self.numel();
        let g = match self {
            ParamRef::M(t) => t.grad(grads).map(|g| g.reshape([n])),
            ParamRef::S(t) => t.grad(grads).map(|g| g.reshape([n])),
            ParamRef::N(t) => t.grad(grads),
        };
        g.unwrap_or_else(|| {
            let device = match self {
                ParamRef::M(t) => t.device(),
                ParamRef::S(t) => t.device(),
                ParamRef::N(t) => t.device(),
            };
            Tensor::zeros([n], &device.inner())
        })
    }

    /// The current values, flattened, outside the graph.
    pub fn value_flat(&self) -> Tensor<1> {
        let n = self.numel();
        match self {
            ParamRef::M(t) => (*t).clone().detach().inner().reshape([n]),
            ParamRef::S(t) => (*t).clone().detach().inner().reshape([n]),
            ParamRef::N(t) => (*t).clone().detach().inner(),
        }
    }

    /// Replace the values with `v` (flattened), as a fresh leaf that requires gradients.
    pub fn set_flat(&mut self, v: Tensor<1>) {
        match self {
            ParamRef::M(t) => {
                let d = t.dims();
                **t = v.reshape(d).autodiff().require_grad();
            }
            ParamRef::S(t) => {
                let d = t.dims();
                **t = v.reshape(d).autodiff().require_grad();
            }
            ParamRef::N(t) => **t = v.autodiff().require_grad(),
        }
    }

    /// Scales and norm weights: the scale learning rate, no weight decay.
    fn is_scale(&self) -> bool {
        matches!(self, ParamRef::S(_) | ParamRef::N(_))
    }
}

/// The flattened gradients of `params`, in order.
pub(crate) fn flat_grads(
    params: &mut [(String, ParamRef<'_>)],
    grads: &Gradients,
) -> Vec<Tensor<1>> {
    params.iter().map(|(_, p)| p.grad_flat(grads)).collect()
}

/// AdamW (β1 0.9, β2 0.95, ε 1e-8) with decoupled weight decay on the latent weights only.
#[derive(Debug, Default)]
pub(crate) struct AdamW {
    /// Steps taken (for the bias corrections).
    pub t: u64,
    /// First moments by parameter name.
    pub m: BTreeMap<String, Tensor<1>>,
    /// Second moments by parameter name.
    pub v: BTreeMap<String, Tensor<1>>,
}

const B1: f64 = 0.9;
const B2: f64 = 0.95;
const EPS: f64 = 1e-8;

impl AdamW {
    /// One step from the gradients of one backward pass.
    pub fn step(
        &mut self,
        params: &mut [(String, ParamRef<'_>)],
        grads: &Gradients,
        lr: f64,
        scale_lr: f64,
        weight_decay: f64,
        clip: f64,
    ) {
        let g = flat_grads(params, grads);
        self.step_flat(params, g, lr, scale_lr, weight_decay, clip);
    }

    /// One step from flattened (accumulated) gradients in `params` order.
    pub fn step_flat(
        &mut self,
        params: &mut [(String, ParamRef<'_>)],
        grads: Vec<Tensor<1>>,
        lr: f64,
        scale_lr: f64,
        weight_decay: f64,
        clip: f64,
    ) {
        self.t += 1;
        let norm = grads
            .iter()
            .map(|g| f64::from(g.clone().square().sum().into_scalar::<f32>()))
            .sum::<f64>()
            .sqrt();
        let factor = if clip > 0.0 && norm > clip {
            clip / norm
        } else {
            1.0
        };
        let (c1, c2) = (1.0 - B1.powi(self.t as i32), 1.0 - B2.powi(self.t as i32));
        for ((name, p), g) in params.iter_mut().zip(grads) {
            let g = g.mul_scalar(factor);
            let m = match self.m.remove(name.as_str()) {
                Some(m) => m.mul_scalar(B1).add(g.clone().mul_scalar(1.0 - B1)),
                None => g.clone().mul_scalar(1.0 - B1),
            };
            let v = match self.v.remove(name.as_str()) {
                Some(v) => v.mul_scalar(B2).add(g.square().mul_scalar(1.0 - B2)),
                None => g.square().mul_scalar(1.0 - B2),
            };
            let rate = if p.is_scale() { scale_lr } else { lr };
            let mut value = p.value_flat();
            if weight_decay > 0.0 && !p.is_scale() {
                value = value.mul_scalar(1.0 - rate * weight_decay);
            }
            let update = m
                .clone()
                .div_scalar(c1)
                .div(v.clone().div_scalar(c2).sqrt().add_scalar(EPS))
                .mul_scalar(rate);
            p.set_flat(value.sub(update));
            self.m.insert(name.clone(), m);
            self.v.insert(name.clone(), v);
        }
    }
}
