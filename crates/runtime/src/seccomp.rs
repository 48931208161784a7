//! containerd's default seccomp profile (`contrib/seccomp`): deny by default
//! (EPERM), allow the common syscalls, a few `personality` values, syscalls
//! unlocked by the spec's bounding capabilities, `clone` without namespace
//! flags unless CAP_SYS_ADMIN, and `clone3` answered with ENOSYS so libcs
//! fall back to `clone`. The lists are x86_64's (this project's platform).

use crate::seccomp_lists::{ALLOWED, AMD64, BY_CAPABILITY};
use crate::spec::Spec;
use serde_json::{json, Value};

/// CLONE_NEWNS | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET | NEWCGROUP.
const CLONE_NAMESPACE_FLAGS: u64 =
    0x0002_0000 | 0x0400_0000 | 0x0800_0000 | 0x1000_0000 | 0x2000_0000 | 0x4000_0000 | 0x0200_0000;
const ENOSYS: u32 = 38;

fn allow(names: &[&str]) -> Value {
    json!({"names": names, "action": "SCMP_ACT_ALLOW", "args": []})
}

/// The default profile for a spec (capabilities decide the extras).
pub fn default_profile(spec: &Spec) -> Value {
    let mut rules = vec![allow(ALLOWED)];
    for p in [0x0u64, 0x0008, 0x20000, 0x20008, 0xffff_ffff] {
        rules.push(json!({"names": ["personality"], "action": "SCMP_ACT_ALLOW",
            "args": [{"index": 0, "value": p, "op": "SCMP_CMP_EQ"}]}));
    }
    rules.push(allow(&["ptrace"]));
    rules.push(allow(AMD64));
    let caps: Vec<String> = spec
        .process
        .as_ref()
        .and_then(|p| p.capabilities.as_ref())
        .map(|c| c.bounding.clone())
        .unwrap_or_default();
    let mut admin = false;
    for cap in &caps {
        if cap == "CAP_SYS_ADMIN" {
            admin = true;
        }
        if let Some((_, names)) = BY_CAPABILITY.iter().find(|(c, _)| c == cap) {
            rules.push(allow(names));
        }
    }
    if !admin {
        rules.push(json!({"names": ["clone"], "action": "SCMP_ACT_ALLOW",
            "args": [{"index": 0, "value": CLONE_NAMESPACE_FLAGS, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]}));
        rules.push(json!({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS}));
    }
    json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": rules,
    })
}

impl Spec {
    /// Apply containerd's default seccomp profile (after capabilities are final).
    pub fn with_default_seccomp(&mut self) -> &mut Self {
        let profile = default_profile(self);
        self.linux
            .get_or_insert_with(Default::default)
            .extra
            .insert("seccomp".into(), profile);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::default_spec;

    #[test]
    fn default_profile_denies_by_default_and_follows_capabilities() {
        let mut s = default_spec("ns", "c");
        s.with_default_seccomp();
        let v: Value = serde_json::from_slice(&s.to_json()).unwrap();
        let sc = &v["linux"]["seccomp"];
        assert_eq!(sc["defaultAction"], "SCMP_ACT_ERRNO");
        let rules = sc["syscalls"].as_array().unwrap();
        let names = |r: &Value| -> Vec<String> {
            r["names"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n.as_str().unwrap().to_string())
                .collect()
        };
        assert!(names(&rules[0]).contains(&"read".to_string()));
        assert!(!rules
            .iter()
            .any(|r| names(r).contains(&"mount".to_string())));
        assert!(rules
            .iter()
            .any(|r| names(r) == ["clone3"] && r["errnoRet"] == 38));

        let mut p = default_spec("ns", "c");
        p.with_privileged().with_default_seccomp();
        let rules = default_profile(&p)["syscalls"].as_array().unwrap().clone();
        assert!(rules
            .iter()
            .any(|r| names(r).contains(&"mount".to_string())));
        assert!(!rules.iter().any(|r| names(r) == ["clone3"]));
    }
}
