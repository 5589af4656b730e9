//! Execution providers: the hardware ONNX Runtime runs the networks on.
//!
//! Operators list providers in order of preference, as ONNX Runtime takes them: each operator
//! of a network runs on the first listed provider that supports it, and the CPU takes the rest.
//! A provider that fails to register stops the start with an error that names it, because a pod
//! meant for a GPU that silently runs on its CPU is many times slower than planned. With
//! fallback allowed, a provider that fails is left out with a warning instead.

use std::fmt;

use ort::ep::{self, ExecutionProviderDispatch};

/// One execution provider this build can request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Provider {
    /// ONNX Runtime's own CPU kernels, which every library has.
    Cpu,
    /// NVIDIA CUDA, which needs the `onnxruntime-gpu` library, CUDA and cuDNN.
    Cuda,
    /// NVIDIA TensorRT, which needs the `onnxruntime-gpu` library and TensorRT besides CUDA.
    Tensorrt,
}

impl Provider {
    /// Name used in settings, logs, `/readyz` and the metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Cuda => "cuda",
            Self::Tensorrt => "tensorrt",
        }
    }

    /// Builds the provider's registration for a session builder. The CPU needs none.
    pub(crate) fn dispatch(self) -> Option<ExecutionProviderDispatch> {
        match self {
            Self::Cpu => None,
            Self::Cuda => Some(ep::CUDA::default().build().error_on_failure()),
            Self::Tensorrt => Some(ep::TensorRT::default().build().error_on_failure()),
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The requested providers and what to do when one fails.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderChoice {
    /// Providers in order of preference. Never empty, and the CPU, when listed, comes last.
    pub preference: Vec<Provider>,
    /// Leave out a provider that fails to register instead of stopping.
    pub allow_fallback: bool,
}

impl Default for ProviderChoice {
    fn default() -> Self {
        Self {
            preference: vec![Provider::Cpu],
            allow_fallback: false,
        }
    }
}

/// A provider that could not be used.
#[derive(Debug, thiserror::Error)]
#[error(
    "execution provider {provider} failed to register: {message}; {provider} needs an ONNX Runtime library \
     built with it (the onnxruntime-gpu wheel for cuda and tensorrt) and its driver libraries, or pass \
     --allow-provider-fallback (THROMBSEG_ALLOW_PROVIDER_FALLBACK=true) to continue without it"
)]
pub struct ProviderError {
    pub provider: Provider,
    pub message: String,
}

impl ProviderChoice {
    /// Checks the preference list: not empty, no repeats, and the CPU last, because ONNX Runtime
    /// always places its CPU provider after every other one.
    pub fn new(preference: Vec<Provider>, allow_fallback: bool) -> Result<Self, String> {
        if preference.is_empty() {
            return Err("the execution provider list is empty; give at least one of cpu, cuda, tensorrt".into());
        }
        for (index, provider) in preference.iter().enumerate() {
            if preference[..index].contains(provider) {
                return Err(format!("execution provider {provider} is listed twice"));
            }
        }
        if let Some(position) = preference.iter().position(|p| *p == Provider::Cpu)
            && position + 1 != preference.len()
        {
            return Err(
                "execution provider cpu must come last: ONNX Runtime always tries the CPU after the others".into(),
            );
        }
        Ok(Self {
            preference,
            allow_fallback,
        })
    }

    /// Registers every listed provider through `register` and returns the primary one: the
    /// first that registered, or the CPU when none did.
    ///
    /// Without fallback the first failure is returned. With fallback a failure is passed to
    /// `skipped`, for logging, and the next provider is tried.
    pub fn register_all(
        &self,
        mut register: impl FnMut(Provider) -> Result<(), ProviderError>,
        mut skipped: impl FnMut(&ProviderError),
    ) -> Result<Provider, ProviderError> {
        let mut primary = None;
        for &provider in &self.preference {
            match register(provider) {
                Ok(()) => {
                    primary.get_or_insert(provider);
                }
                Err(error) if self.allow_fallback => skipped(&error),
                Err(error) => return Err(error),
            }
        }
        Ok(primary.unwrap_or(Provider::Cpu))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn choice(preference: &[Provider], allow_fallback: bool) -> ProviderChoice {
        ProviderChoice {
            preference: preference.to_vec(),
            allow_fallback,
        }
    }

    fn fail_unless_cpu(provider: Provider) -> Result<(), ProviderError> {
        match provider {
            Provider::Cpu => Ok(()),
            _ => Err(ProviderError {
                provider,
                message: "not in this library".into(),
            }),
        }
    }

    #[test]
    fn failed_provider_stops_without_fallback() {
        let mut tried = Vec::new();

        let chosen = choice(&[Provider::Cuda, Provider::Cpu], false).register_all(
            |provider| {
                tried.push(provider);
                fail_unless_cpu(provider)
            },
            |_| {},
        );

        let error = chosen.unwrap_err();
        assert_eq!(error.provider, Provider::Cuda);
        assert!(
            error.to_string().contains("THROMBSEG_ALLOW_PROVIDER_FALLBACK"),
            "{error}"
        );
        assert_eq!(tried, vec![Provider::Cuda]);
    }

    #[test]
    fn fallback_skips_failed_providers() {
        let mut skipped = Vec::new();

        let chosen = choice(&[Provider::Tensorrt, Provider::Cuda], true)
            .register_all(fail_unless_cpu, |error| skipped.push(error.provider));

        assert_eq!(chosen.unwrap(), Provider::Cpu);
        assert_eq!(skipped, vec![Provider::Tensorrt, Provider::Cuda]);
    }

    #[test]
    fn first_registered_provider_is_primary() {
        let chosen = choice(&[Provider::Tensorrt, Provider::Cuda, Provider::Cpu], true).register_all(
            |provider| match provider {
                Provider::Tensorrt => Err(ProviderError {
                    provider,
                    message: "no TensorRT".into(),
                }),
                _ => Ok(()),
            },
            |_| {},
        );

        assert_eq!(chosen.unwrap(), Provider::Cuda);
    }

    #[test]
    fn preference_list_is_checked() {
        assert!(ProviderChoice::new(vec![], false).is_err());
        assert!(ProviderChoice::new(vec![Provider::Cuda, Provider::Cuda], false).is_err());
        assert!(ProviderChoice::new(vec![Provider::Cpu, Provider::Cuda], false).is_err());
        assert!(ProviderChoice::new(vec![Provider::Tensorrt, Provider::Cuda, Provider::Cpu], false).is_ok());
    }
}
