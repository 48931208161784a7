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
