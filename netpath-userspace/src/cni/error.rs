//! CNI error objects and the codes netpath's plugin uses.
//!
//! Codes below 100 are the spec's; 100 and up are netpath's own, one per
//! cause a user acts on differently. The table is in the README
//! ("Running under podman / CNI").

use serde::Serialize;

use crate::{
    client::{ApiError, Unreachable},
    model::ErrorReason,
};

/// Spec: the config's `cniVersion` is not one the plugin supports.
pub const INCOMPATIBLE_VERSION: u32 = 1;
/// Spec: a field of the network configuration is not supported.
pub const UNSUPPORTED_FIELD: u32 = 2;
/// Spec: the container (attachment) is unknown.
pub const UNKNOWN_CONTAINER: u32 = 3;
/// Spec: a CNI_* environment variable is missing or invalid (also: the
/// netns CNI_NETNS names does not exist).
pub const INVALID_ENVIRONMENT: u32 = 4;
/// Spec: reading the configuration failed.
pub const IO_FAILURE: u32 = 5;
/// Spec: the configuration is not valid JSON of the expected shape.
pub const DECODE_FAILURE: u32 = 6;
/// Spec: the configuration (or a runtime argument) has an invalid value.
pub const INVALID_CONFIG: u32 = 7;
/// Spec: transient; here, the agent's socket cannot be reached.
pub const TRY_AGAIN_LATER: u32 = 11;
/// Spec (STATUS): the plugin cannot serve ADD: the agent is not running.
pub const NOT_AVAILABLE: u32 = 50;
/// netpath: the agent failed for a reason of its own (see the message).
pub const AGENT_FAILED: u32 = 100;
/// netpath: the requested address belongs to another container.
pub const ADDRESS_IN_USE: u32 = 101;
/// netpath: the subnet has no free address left.
pub const ADDRESS_POOL_EXHAUSTED: u32 = 102;
/// netpath: a requested host port is already published by another container.
pub const PORT_IN_USE: u32 = 103;
/// netpath: the requested MAC belongs to another container or the gateway.
pub const MAC_IN_USE: u32 = 104;
/// netpath: the attachment or the netns is already attached (or the netns
/// already has an interface of that name).
pub const ALREADY_ATTACHED: u32 = 105;
/// netpath (CHECK): the attachment differs from what ADD set up.
pub const CHECK_FAILED: u32 = 106;
/// netpath: the instance holds as many containers as its bridges can take.
pub const INSTANCE_FULL: u32 = 107;

/// A CNI error object (`{"cniVersion","code","msg","details"}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("CNI error {code}: {msg}")]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> CniError {
        CniError { code, msg: msg.into(), details: String::new() }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> CniError {
        self.details = details.into();
        self
    }

    /// The error object as the plugin prints it.
    pub fn to_json(&self, cni_version: &str) -> serde_json::Value {
        let mut v = serde_json::json!({ "cniVersion": cni_version, "code": self.code, "msg": self.msg });
        if !self.details.is_empty() {
            v["details"] = serde_json::Value::String(self.details.clone());
        }
        v
    }

    /// An error from the agent's client: unreachable agent, a refusal with
    /// a reason, or anything else. `what` says what the plugin was doing.
    pub fn from_agent(e: &anyhow::Error, what: &str) -> CniError {
        if let Some(u) = e.downcast_ref::<Unreachable>() {
            return CniError::new(
                TRY_AGAIN_LATER,
                format!("{what}: netpathd is not running or its socket {} cannot be reached", u.socket.display()),
            )
            .with_details(format!(
                "{e:#}; start the agent (netpathd) or fix \"socket\"/\"instance\" in the network config"
            ));
        }
        if let Some(api) = e.downcast_ref::<ApiError>() {
            let code = match api.reason {
                Some(ErrorReason::AddressInUse) => ADDRESS_IN_USE,
                Some(ErrorReason::AddressPoolExhausted) => ADDRESS_POOL_EXHAUSTED,
                Some(ErrorReason::PortInUse) => PORT_IN_USE,
                Some(ErrorReason::MacInUse) => MAC_IN_USE,
                Some(ErrorReason::NetnsInUse) | Some(ErrorReason::NameInUse) => ALREADY_ATTACHED,
                Some(ErrorReason::NetnsMissing) => INVALID_ENVIRONMENT,
                Some(ErrorReason::NotFound) => UNKNOWN_CONTAINER,
                Some(ErrorReason::InstanceFull) => INSTANCE_FULL,
                None if api.status == 400 => INVALID_CONFIG,
                None => AGENT_FAILED,
            };
            return CniError::new(code, format!("{what}: {}", api.message));
        }
        CniError::new(AGENT_FAILED, format!("{what}: {e:#}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_errors_map_to_codes() {
        let unreachable: anyhow::Error = Unreachable {
            socket: "/run/netpath/x/api.sock".into(),
            waited: std::time::Duration::from_secs(3),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        }
        .into();
        let e = CniError::from_agent(&unreachable, "ADD");
        assert_eq!(e.code, TRY_AGAIN_LATER);
        assert!(e.msg.contains("/run/netpath/x/api.sock"), "{}", e.msg);
        assert!(e.details.contains("after waiting 3.0 s"), "{}", e.details);
        let refused = |reason, status| -> anyhow::Error { ApiError { status, message: "no".into(), reason }.into() };
        assert_eq!(CniError::from_agent(&refused(Some(ErrorReason::PortInUse), 409), "ADD").code, PORT_IN_USE);
        assert_eq!(CniError::from_agent(&refused(Some(ErrorReason::AddressInUse), 409), "ADD").code, ADDRESS_IN_USE);
        assert_eq!(CniError::from_agent(&refused(None, 400), "ADD").code, INVALID_CONFIG);
        assert_eq!(CniError::from_agent(&refused(None, 500), "ADD").code, AGENT_FAILED);
        let json = CniError::new(7, "bad").to_json("1.0.0");
        assert_eq!(json, serde_json::json!({"cniVersion": "1.0.0", "code": 7, "msg": "bad"}));
    }
}
