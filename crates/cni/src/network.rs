//! ADD, DEL and CHECK of one network (a plugin list), libcni's
//! `AddNetworkList`/`DelNetworkList`/`CheckNetworkList`:
//!
//! - each plugin gets the list's `name` and `cniVersion`, the previous
//!   plugin's result as `prevResult`, and in `runtimeConfig` the capability
//!   args it declares in `capabilities`;
//! - ADD runs the list in order and caches the final result;
//! - DEL runs it in reverse with the cached result as `prevResult` (spec
//!   0.4.0 and later). Unlike libcni, which stops at the first failing
//!   plugin, DEL goes on with the others (DEL is idempotent and best-effort,
//!   so an IPAM lease is released even when portmap fails) and reports the
//!   first error; the cache entry stays until a DEL succeeds;
//! - CHECK (0.4.0 and later) runs the list in order with the cached result.

use serde_json::{Map, Value};

use crate::cache::{Cache, Entry};
use crate::config::{NetworkConfigList, PluginConfig, Version};
use crate::error::{Error, Op, PluginDesc, PluginError, Result};
use crate::exec::Exec;
use crate::result::CniResult;

/// The per-invocation runtime values (libcni's `RuntimeConf`).
pub(crate) struct RuntimeConf<'a> {
    pub container_id: &'a str,
    /// Empty on DEL when the namespace is gone (the spec allows that).
    pub netns: &'a str,
    pub ifname: &'a str,
    pub args: &'a [(String, String)],
    pub capability_args: &'a Map<String, Value>,
}

impl RuntimeConf<'_> {
    fn cni_args(&self) -> String {
        self.args
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(";")
    }
}

/// The stdin of one plugin: its entry plus the injected keys.
fn plugin_stdin(
    list: &NetworkConfigList,
    plugin: &PluginConfig,
    prev: Option<&Value>,
    rt: &RuntimeConf<'_>,
) -> std::result::Result<Vec<u8>, PluginError> {
    let mut conf = plugin.raw.clone();
    conf.insert("name".into(), Value::from(list.name.as_str()));
    conf.insert("cniVersion".into(), Value::from(list.cni_version.as_str()));
    if let Some(prev) = prev {
        conf.insert("prevResult".into(), prev.clone());
    }
    let runtime: Map<String, Value> = plugin
        .capabilities
        .iter()
        .filter(|(_, wanted)| **wanted)
        .filter_map(|(cap, _)| {
            rt.capability_args
                .get(cap)
                .map(|v| (cap.clone(), v.clone()))
        })
        .collect();
    if !runtime.is_empty() {
        conf.insert("runtimeConfig".into(), Value::Object(runtime));
    }
    serde_json::to_vec(&Value::Object(conf)).map_err(|e| PluginError::BadOutput {
        reason: format!("encoding the plugin's config: {e}"),
        stderr: String::new(),
    })
}

/// The plugin as errors name it: list entries rarely have a `name`, so the
/// network's name (which libcni injects into the plugin's config) stands in.
fn desc(list: &NetworkConfigList, plugin: &PluginConfig) -> PluginDesc {
    PluginDesc {
        plugin_type: plugin.plugin_type.clone(),
        name: Some(plugin.name.clone().unwrap_or_else(|| list.name.clone())),
    }
}

/// Run one plugin of `list`; its stdout.
fn invoke(
    exec: &Exec,
    op: Op,
    list: &NetworkConfigList,
    plugin: &PluginConfig,
    prev: Option<&Value>,
    rt: &RuntimeConf<'_>,
) -> Result<Vec<u8>> {
    let wrap = |source: PluginError| Error::Plugin {
        op,
        network: list.name.clone(),
        plugin: desc(list, plugin),
        source: Box::new(source),
    };
    let path = exec.find(&plugin.plugin_type).map_err(wrap)?;
    let stdin = plugin_stdin(list, plugin, prev, rt).map_err(wrap)?;
    let args = rt.cni_args();
    let cni_path = exec.cni_path();
    let env = [
        ("CNI_COMMAND", op.command()),
        ("CNI_CONTAINERID", rt.container_id),
        ("CNI_NETNS", rt.netns),
        ("CNI_IFNAME", rt.ifname),
        ("CNI_ARGS", args.as_str()),
        ("CNI_PATH", cni_path.as_str()),
    ];
    exec.run(&path, &env, &stdin).map_err(wrap)
}

/// ADD: run the list in order, cache and return the final result.
pub(crate) fn add(
    exec: &Exec,
    cache: &Cache,
    list: &NetworkConfigList,
    rt: &RuntimeConf<'_>,
) -> Result<CniResult> {
    let mut result: Option<CniResult> = None;
    for plugin in &list.plugins {
        let out = invoke(
            exec,
            Op::Add,
            list,
            plugin,
            result.as_ref().map(|r| &r.raw),
            rt,
        )?;
        let parsed = CniResult::parse(&out).map_err(|reason| Error::Plugin {
            op: Op::Add,
            network: list.name.clone(),
            plugin: desc(list, plugin),
            source: Box::new(PluginError::BadOutput {
                reason,
                stderr: String::new(),
            }),
        })?;
        result = Some(parsed);
    }
    // from_conflist_bytes refuses empty lists, so there always is a result
    let result = result.ok_or_else(|| Error::InvalidConfig {
        origin: list.origin.clone(),
        reason: "no plugins in list".into(),
    })?;
    cache.write(&Entry {
        network: &list.name,
        container_id: rt.container_id,
        ifname: rt.ifname,
        config: &list.bytes,
        cni_args: rt.args,
        capability_args: rt.capability_args,
        result: &result.raw,
    })?;
    Ok(result)
}

/// DEL: every plugin in reverse, tolerating what `tolerate` accepts; the
/// cache entry goes once all succeeded.
pub(crate) fn del(
    exec: &Exec,
    cache: &Cache,
    list: &NetworkConfigList,
    rt: &RuntimeConf<'_>,
    tolerate: impl Fn(&Error) -> bool,
) -> Result<()> {
    let cached = if list.version() >= Version(0, 4, 0) {
        cache.read_result(&list.name, rt.container_id, rt.ifname)
    } else {
        None
    };
    let mut first_error = None;
    for plugin in list.plugins.iter().rev() {
        if let Err(e) = invoke(exec, Op::Del, list, plugin, cached.as_ref(), rt) {
            if !tolerate(&e) && first_error.is_none() {
                first_error = Some(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => cache.remove(&list.name, rt.container_id, rt.ifname),
    }
}

/// CHECK: the list in order, with the cached ADD result.
pub(crate) fn check(
    exec: &Exec,
    cache: &Cache,
    list: &NetworkConfigList,
    rt: &RuntimeConf<'_>,
) -> Result<()> {
    if list.version() < Version(0, 4, 0) {
        return Err(Error::CheckUnsupported {
            network: list.name.clone(),
            version: list.cni_version.clone(),
        });
    }
    if list.disable_check {
        return Ok(());
    }
    let cached = cache
        .read_result(&list.name, rt.container_id, rt.ifname)
        .ok_or_else(|| Error::NoCachedResult {
            network: list.name.clone(),
            container_id: rt.container_id.to_string(),
            ifname: rt.ifname.to_string(),
        })?;
    for plugin in &list.plugins {
        invoke(exec, Op::Check, list, plugin, Some(&cached), rt)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;
    use std::time::Duration;

    /// A script plugin that logs "<command> <its stdin>" to `log` and
    /// prints `result` on ADD (or fails when `fail_on` is its command).
    fn plugin(dir: &Path, name: &str, result: &str, fail_on: &str) {
        let log = dir.join("log");
        let body = format!(
            r#"#!/bin/sh
input=$(cat)
echo "$CNI_COMMAND {name} $CNI_NETNS $input" >> {log}
if [ "$CNI_COMMAND" = "{fail_on}" ]; then echo '{{"code":100,"msg":"{name} says no"}}'; exit 1; fi
if [ "$CNI_COMMAND" = ADD ]; then echo '{result}'; fi
"#,
            log = log.display()
        );
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn log(dir: &Path) -> Vec<(String, String, Value)> {
        std::fs::read_to_string(dir.join("log"))
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let mut parts = l.splitn(4, ' ');
                let cmd = parts.next().unwrap().to_string();
                let name = parts.next().unwrap().to_string();
                let _netns = parts.next();
                (
                    cmd,
                    name,
                    serde_json::from_str(parts.next().unwrap()).unwrap(),
                )
            })
            .collect()
    }

    struct Fixture {
        dir: tempfile::TempDir,
        exec: Exec,
        cache: Cache,
        list: NetworkConfigList,
    }

    fn fixture(fail_on: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        plugin(
            dir.path(),
            "first",
            r#"{"cniVersion":"1.0.0","ips":[{"address":"10.0.0.2/24"}]}"#,
            "",
        );
        plugin(
            dir.path(),
            "second",
            r#"{"cniVersion":"1.0.0","ips":[{"address":"10.0.0.3/24"}]}"#,
            fail_on,
        );
        let list = NetworkConfigList::from_conflist_bytes(
            br#"{"cniVersion":"1.0.0","name":"chain","plugins":[{"type":"first"},{"type":"second"}]}"#,
            "test",
        )
        .unwrap();
        Fixture {
            exec: Exec {
                bin_dirs: vec![dir.path().to_path_buf()],
                timeout: Duration::from_secs(10),
            },
            cache: Cache {
                dir: dir.path().join("cache"),
            },
            list,
            dir,
        }
    }

    fn rt<'a>(caps: &'a Map<String, Value>) -> RuntimeConf<'a> {
        RuntimeConf {
            container_id: "c1",
            netns: "/run/netns/x",
            ifname: "eth0",
            args: &[],
            capability_args: caps,
        }
    }

    #[test]
    fn add_chains_prev_result_and_del_reverses_with_the_cached_result() {
        let f = fixture("");
        let caps = Map::new();
        let r = add(&f.exec, &f.cache, &f.list, &rt(&caps)).unwrap();
        assert_eq!(
            r.ips[0].address.to_string(),
            "10.0.0.3/24",
            "the last plugin's result"
        );
        del(&f.exec, &f.cache, &f.list, &rt(&caps), |_| false).unwrap();
        let log = log(f.dir.path());
        let order: Vec<_> = log.iter().map(|(c, n, _)| format!("{c} {n}")).collect();
        assert_eq!(
            order,
            ["ADD first", "ADD second", "DEL second", "DEL first"]
        );
        assert!(log[0].2.get("prevResult").is_none());
        assert_eq!(log[1].2["prevResult"]["ips"][0]["address"], "10.0.0.2/24");
        // DEL gets the cached final result
        assert_eq!(log[2].2["prevResult"]["ips"][0]["address"], "10.0.0.3/24");
        assert_eq!(log[3].2["prevResult"]["ips"][0]["address"], "10.0.0.3/24");
        assert!(f.cache.read_result("chain", "c1", "eth0").is_none());
    }

    #[test]
    fn failed_del_still_runs_the_other_plugins_and_keeps_the_cache() {
        let f = fixture("DEL");
        let caps = Map::new();
        add(&f.exec, &f.cache, &f.list, &rt(&caps)).unwrap();
        let e = del(&f.exec, &f.cache, &f.list, &rt(&caps), |_| false).unwrap_err();
        assert_eq!(
            e.to_string(),
            "plugin type=\"second\" name=\"chain\" failed (delete): second says no"
        );
        let order: Vec<_> = log(f.dir.path())
            .iter()
            .map(|(c, n, _)| format!("{c} {n}"))
            .collect();
        assert_eq!(
            order,
            ["ADD first", "ADD second", "DEL second", "DEL first"]
        );
        assert!(
            f.cache.read_result("chain", "c1", "eth0").is_some(),
            "kept for the retry"
        );
        // a tolerated failure counts as done
        del(&f.exec, &f.cache, &f.list, &rt(&caps), |e| {
            e.to_string().contains("says no")
        })
        .unwrap();
        assert!(f.cache.read_result("chain", "c1", "eth0").is_none());
    }

    #[test]
    fn add_failure_and_bad_output_name_the_plugin() {
        let f = fixture("ADD");
        let caps = Map::new();
        let e = add(&f.exec, &f.cache, &f.list, &rt(&caps)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "plugin type=\"second\" name=\"chain\" failed (add): second says no"
        );
        assert!(f.cache.read_result("chain", "c1", "eth0").is_none());
        plugin(f.dir.path(), "second", "this is no result", "");
        let e = add(&f.exec, &f.cache, &f.list, &rt(&caps)).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("plugin type=\"second\" name=\"chain\" failed (add): invalid plugin output: not JSON"),
            "{e}"
        );
    }

    #[test]
    fn check_needs_a_cached_result_and_a_recent_version() {
        let f = fixture("");
        let caps = Map::new();
        let e = check(&f.exec, &f.cache, &f.list, &rt(&caps)).unwrap_err();
        assert!(matches!(e, Error::NoCachedResult { .. }), "{e}");
        add(&f.exec, &f.cache, &f.list, &rt(&caps)).unwrap();
        check(&f.exec, &f.cache, &f.list, &rt(&caps)).unwrap();
        let log = log(f.dir.path());
        assert_eq!(log[2].0, "CHECK");
        assert_eq!(log[2].2["prevResult"]["ips"][0]["address"], "10.0.0.3/24");
        let old = NetworkConfigList::from_conflist_bytes(
            br#"{"cniVersion":"0.3.1","name":"chain","plugins":[{"type":"first"}]}"#,
            "old",
        )
        .unwrap();
        let e = check(&f.exec, &f.cache, &old, &rt(&caps)).unwrap_err();
        assert!(matches!(e, Error::CheckUnsupported { .. }), "{e}");
    }

    #[test]
    fn stdin_injects_name_version_prev_result_and_declared_capabilities_only() {
        let list = NetworkConfigList::from_conflist_bytes(
            br#"{"cniVersion":"1.0.0","name":"net","plugins":[
                {"type":"bridge","runtimeConfig":{"stale":1}},
                {"type":"portmap","capabilities":{"portMappings":true,"bandwidth":false}}]}"#,
            "t",
        )
        .unwrap();
        let caps = Map::from_iter([
            ("portMappings".to_string(), json!([{"hostPort":80}])),
            ("bandwidth".to_string(), json!({"ingressRate":1})),
        ]);
        let rt = RuntimeConf {
            container_id: "c",
            netns: "/n",
            ifname: "eth0",
            args: &[
                ("IgnoreUnknown".into(), "1".into()),
                ("K8S_POD_NAME".into(), "p".into()),
            ],
            capability_args: &caps,
        };
        assert_eq!(rt.cni_args(), "IgnoreUnknown=1;K8S_POD_NAME=p");
        let first: Value =
            serde_json::from_slice(&plugin_stdin(&list, &list.plugins[0], None, &rt).unwrap())
                .unwrap();
        assert_eq!(first["name"], "net");
        assert_eq!(first["cniVersion"], "1.0.0");
        assert!(first.get("prevResult").is_none());
        assert_eq!(
            first["runtimeConfig"],
            json!({"stale":1}),
            "no capabilities declared: left alone"
        );
        let prev = json!({"cniVersion":"1.0.0","ips":[]});
        let second: Value = serde_json::from_slice(
            &plugin_stdin(&list, &list.plugins[1], Some(&prev), &rt).unwrap(),
        )
        .unwrap();
        assert_eq!(second["prevResult"], prev);
        assert_eq!(
            second["runtimeConfig"],
            json!({"portMappings":[{"hostPort":80}]})
        );
    }
}
