//! The jobspec grammar as data: for every block, which HCL attributes and sub-blocks it
//! accepts, the Nomad API field each one becomes and how its value is converted.
//!
//! Field order follows the Go structs in Nomad's `api` package (`api/jobs.go`,
//! `api/tasks.go`, `api/resources.go`, `api/services.go`, `api/consul.go`, ...), because
//! `nomad job run -output` marshals fields in struct order. JSON names starting with `_` are
//! parser-internal and are consumed before output (see `normalize`).

/// How one HCL attribute or block turns into a JSON value.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    /// Attribute converted to a string (numbers and bools are stringified like HCL does).
    Str,
    /// Attribute converted to an integer (numeric strings accepted).
    Int,
    /// Attribute converted to a bool (`"true"`/`"false"` strings accepted).
    Bool,
    /// Attribute holding a Go duration string (or a number of ns), emitted as integer ns.
    Duration,
    /// Attribute holding a list of strings.
    StrList,
    /// Attribute holding a list of integers.
    IntList,
    /// `name { k = "v" }` block or `name = { k = "v" }` attribute: a string map.
    StrMap,
    /// `header { Name = ["v1", "v2"] }` block: a map of string lists.
    ListMap,
    /// Driver-specific block passed through as JSON, nested blocks becoming lists of objects.
    Config,
    /// A single nested block.
    Block(&'static BlockSpec),
    /// A repeatable nested block, emitted as a list.
    Blocks(&'static BlockSpec),
    /// A repeatable labelled block, emitted as an object keyed by label.
    LabeledMap(&'static BlockSpec),
    /// Recognised but deliberately rejected, with the reason.
    Rejected(&'static str),
    /// Never read from HCL; filled in by normalisation (kept here for field order).
    Computed,
}

impl Kind {
    /// Whether the HCL source writes this field as `name = value`.
    pub(crate) fn is_attribute(self) -> bool {
        matches!(
            self,
            Kind::Str
                | Kind::Int
                | Kind::Bool
                | Kind::Duration
                | Kind::StrList
                | Kind::IntList
                | Kind::StrMap
                | Kind::Rejected(_)
        )
    }

    /// Whether the HCL source writes this field as `name { ... }`.
    pub(crate) fn is_block(self) -> bool {
        matches!(
            self,
            Kind::StrMap
                | Kind::ListMap
                | Kind::Config
                | Kind::Block(_)
                | Kind::Blocks(_)
                | Kind::LabeledMap(_)
                | Kind::Rejected(_)
        )
    }
}

/// One entry of a block's table: HCL name → Nomad API name and conversion.
#[derive(Debug)]
pub(crate) struct Field {
    pub hcl: &'static str,
    pub json: &'static str,
    pub kind: Kind,
}

/// Hook run on a decoded block before it is emitted (special value semantics).
pub(crate) type Finish = fn(&mut super::decode::Decoded<'_>) -> Result<(), super::JobspecError>;

/// A block type of the jobspec.
#[derive(Debug)]
pub(crate) struct BlockSpec {
    /// The HCL block name, for messages.
    pub name: &'static str,
    /// JSON field that receives the block's single label; `None` means no labels allowed.
    pub label: Option<&'static str>,
    pub fields: &'static [Field],
    pub finish: Option<Finish>,
}

impl BlockSpec {
    /// Position of a JSON key in struct order (label first), for re-ordering.
    pub(crate) fn rank(&self, json: &str) -> usize {
        if self.label == Some(json) {
            return 0;
        }
        self.fields
            .iter()
            .position(|f| f.json == json)
            .map_or(usize::MAX, |p| p + 1)
    }
}

const fn f(hcl: &'static str, json: &'static str, kind: Kind) -> Field {
    Field { hcl, json, kind }
}

/// A field that only normalisation fills in.
const fn computed(json: &'static str) -> Field {
    Field {
        hcl: "",
        json,
        kind: Kind::Computed,
    }
}

const fn block(
    name: &'static str,
    label: Option<&'static str>,
    fields: &'static [Field],
) -> BlockSpec {
    BlockSpec {
        name,
        label,
        fields,
        finish: None,
    }
}

use Kind::{
    Block, Blocks, Bool, Config, Duration, Int, IntList, LabeledMap, ListMap, Rejected, Str,
    StrList, StrMap,
};

// ---------------------------------------------------------------- job

pub(crate) static JOB: BlockSpec = block(
    "job",
    None,
    &[
        f("region", "Region", Str),
        f("namespace", "Namespace", Str),
        f("id", "ID", Str),
        f("name", "Name", Str),
        f("type", "Type", Str),
        f("priority", "Priority", Int),
        f("all_at_once", "AllAtOnce", Bool),
        f("datacenters", "Datacenters", StrList),
        f("node_pool", "NodePool", Str),
        f("constraint", "Constraints", Blocks(&CONSTRAINT)),
        f("affinity", "Affinities", Blocks(&AFFINITY)),
        f("group", "TaskGroups", Blocks(&GROUP)),
        f("update", "Update", Block(&UPDATE)),
        f(
            "multiregion",
            "Multiregion",
            Rejected(
                "multiregion deployments are Nomad Enterprise and not supported by this parser",
            ),
        ),
        f("spread", "Spreads", Blocks(&SPREAD)),
        f("periodic", "Periodic", Block(&PERIODIC)),
        f("parameterized", "ParameterizedJob", Block(&PARAMETERIZED)),
        f("reschedule", "Reschedule", Block(&RESCHEDULE)),
        f("migrate", "Migrate", Block(&MIGRATE)),
        f("meta", "Meta", StrMap),
        // api.Job marshals this as "UI"/"URL"; the documented JSON sample
        // (json-jobs fragment-job-ui) spells it "Ui"/"Url", and Nomad decodes either.
        f("ui", "Ui", Block(&UI)),
        // Job-level vault and task blocks are parser-only: normalisation pushes them down.
        f("vault", "_Vault", Block(&VAULT)),
        f("task", "_Tasks", Blocks(&TASK)),
    ],
);

static UI: BlockSpec = block(
    "ui",
    None,
    &[
        f("description", "Description", Str),
        f("link", "Links", Blocks(&UI_LINK)),
    ],
);

static UI_LINK: BlockSpec = block(
    "link",
    None,
    &[f("label", "Label", Str), f("url", "Url", Str)],
);

pub(crate) static PERIODIC: BlockSpec = block(
    "periodic",
    None,
    &[
        f("enabled", "Enabled", Bool),
        f("cron", "Spec", Str),
        f("crons", "Specs", StrList),
        computed("SpecType"),
        f("prohibit_overlap", "ProhibitOverlap", Bool),
        f("time_zone", "TimeZone", Str),
    ],
);

static PARAMETERIZED: BlockSpec = block(
    "parameterized",
    None,
    &[
        f("payload", "Payload", Str),
        f("meta_required", "MetaRequired", StrList),
        f("meta_optional", "MetaOptional", StrList),
    ],
);

static UPDATE: BlockSpec = block(
    "update",
    None,
    &[
        f("stagger", "Stagger", Duration),
        f("max_parallel", "MaxParallel", Int),
        f("health_check", "HealthCheck", Str),
        f("min_healthy_time", "MinHealthyTime", Duration),
        f("healthy_deadline", "HealthyDeadline", Duration),
        f("progress_deadline", "ProgressDeadline", Duration),
        f("canary", "Canary", Int),
        f("auto_revert", "AutoRevert", Bool),
        f("auto_promote", "AutoPromote", Bool),
    ],
);

static MIGRATE: BlockSpec = block(
    "migrate",
    None,
    &[
        f("max_parallel", "MaxParallel", Int),
        f("health_check", "HealthCheck", Str),
        f("min_healthy_time", "MinHealthyTime", Duration),
        f("healthy_deadline", "HealthyDeadline", Duration),
    ],
);

static RESCHEDULE: BlockSpec = block(
    "reschedule",
    None,
    &[
        f("attempts", "Attempts", Int),
        f("interval", "Interval", Duration),
        f("delay", "Delay", Duration),
        f("delay_function", "DelayFunction", Str),
        f("max_delay", "MaxDelay", Duration),
        f("unlimited", "Unlimited", Bool),
    ],
);

// ---------------------------------------------------------------- placement

pub(crate) static CONSTRAINT: BlockSpec = BlockSpec {
    name: "constraint",
    label: None,
    fields: &[
        f("attribute", "LTarget", Str),
        f("value", "RTarget", Str),
        f("operator", "Operand", Str),
        f("version", "_version", Str),
        f("semver", "_semver", Str),
        f("regexp", "_regexp", Str),
        f("set_contains", "_set_contains", Str),
        f("distinct_hosts", "_distinct_hosts", Bool),
        f("distinct_property", "_distinct_property", Str),
        f("set_contains_all", "", Rejected(
            "Nomad's HCL parser ignores this shorthand in constraints; write operator = \"set_contains_all\" and value = ...",
        )),
        f("set_contains_any", "", Rejected(
            "Nomad's HCL parser ignores this shorthand in constraints; write operator = \"set_contains_any\" and value = ...",
        )),
        f("attribute_is_set", "", Rejected(
            "Nomad's HCL parser ignores this shorthand; write operator = \"is_set\"",
        )),
        f("attribute_is_not_set", "", Rejected(
            "Nomad's HCL parser ignores this shorthand; write operator = \"is_not_set\"",
        )),
    ],
    finish: Some(super::decode::finish_constraint),
};

pub(crate) static AFFINITY: BlockSpec = BlockSpec {
    name: "affinity",
    label: None,
    fields: &[
        f("attribute", "LTarget", Str),
        f("value", "RTarget", Str),
        f("operator", "Operand", Str),
        f("weight", "Weight", Int),
        f("version", "_version", Str),
        f("semver", "_semver", Str),
        f("regexp", "_regexp", Str),
        f("set_contains_any", "_set_contains_any", Str),
        f("set_contains_all", "_set_contains_all", Str),
        f("set_contains", "_set_contains", Str),
    ],
    finish: Some(super::decode::finish_affinity),
};

static SPREAD: BlockSpec = block(
    "spread",
    None,
    &[
        f("attribute", "Attribute", Str),
        f("weight", "Weight", Int),
        f("target", "SpreadTarget", Blocks(&SPREAD_TARGET)),
    ],
);

static SPREAD_TARGET: BlockSpec = block("target", Some("Value"), &[f("percent", "Percent", Int)]);

// ---------------------------------------------------------------- group

pub(crate) static GROUP: BlockSpec = block(
    "group",
    Some("Name"),
    &[
        f("count", "Count", Int),
        f("constraint", "Constraints", Blocks(&CONSTRAINT)),
        f("affinity", "Affinities", Blocks(&AFFINITY)),
        f("task", "Tasks", Blocks(&TASK)),
        f("spread", "Spreads", Blocks(&SPREAD)),
        f("volume", "Volumes", LabeledMap(&VOLUME)),
        f("restart", "RestartPolicy", Block(&RESTART)),
        f("disconnect", "Disconnect", Block(&DISCONNECT)),
        f("reschedule", "ReschedulePolicy", Block(&RESCHEDULE)),
        f("ephemeral_disk", "EphemeralDisk", Block(&EPHEMERAL_DISK)),
        f("update", "Update", Block(&UPDATE)),
        f("migrate", "Migrate", Block(&MIGRATE)),
        f("network", "Networks", Blocks(&NETWORK)),
        f("meta", "Meta", StrMap),
        f("service", "Services", Blocks(&SERVICE)),
        f("shutdown_delay", "ShutdownDelay", Duration),
        f("max_run_duration", "MaxRunDuration", Duration),
        f(
            "stop_after_client_disconnect",
            "StopAfterClientDisconnect",
            Duration,
        ),
        f("max_client_disconnect", "MaxClientDisconnect", Duration),
        f("scaling", "Scaling", Block(&GROUP_SCALING)),
        f("consul", "Consul", Block(&CONSUL)),
        f(
            "prevent_reschedule_on_lost",
            "PreventRescheduleOnLost",
            Bool,
        ),
        // Group-level vault is inherited by tasks without their own (see normalize).
        f("vault", "_Vault", Block(&VAULT)),
    ],
);

static VOLUME: BlockSpec = block(
    "volume",
    Some("Name"),
    &[
        f("type", "Type", Str),
        f("source", "Source", Str),
        f("read_only", "ReadOnly", Bool),
        f("sticky", "Sticky", Bool),
        f("access_mode", "AccessMode", Str),
        f("attachment_mode", "AttachmentMode", Str),
        f("mount_options", "MountOptions", Block(&MOUNT_OPTIONS)),
        f("per_alloc", "PerAlloc", Bool),
    ],
);

static MOUNT_OPTIONS: BlockSpec = block(
    "mount_options",
    None,
    &[
        f("fs_type", "FSType", Str),
        f("mount_flags", "MountFlags", StrList),
    ],
);

static RESTART: BlockSpec = block(
    "restart",
    None,
    &[
        f("interval", "Interval", Duration),
        f("attempts", "Attempts", Int),
        f("delay", "Delay", Duration),
        f("mode", "Mode", Str),
        f("render_templates", "RenderTemplates", Bool),
    ],
);

static DISCONNECT: BlockSpec = block(
    "disconnect",
    None,
    &[
        f("lost_after", "LostAfter", Duration),
        f("stop_on_client_after", "StopOnClientAfter", Duration),
        f("replace", "Replace", Bool),
        f("reconcile", "Reconcile", Str),
    ],
);

static EPHEMERAL_DISK: BlockSpec = block(
    "ephemeral_disk",
    None,
    &[
        f("sticky", "Sticky", Bool),
        f("migrate", "Migrate", Bool),
        f("size", "SizeMB", Int),
    ],
);

pub(crate) static GROUP_SCALING: BlockSpec = BlockSpec {
    name: "scaling",
    label: None,
    fields: &[
        f("min", "Min", Int),
        f("max", "Max", Int),
        f("policy", "Policy", Config),
        f("enabled", "Enabled", Bool),
        f("type", "Type", Str),
    ],
    finish: Some(super::decode::finish_group_scaling),
};

static CONSUL: BlockSpec = block(
    "consul",
    None,
    &[
        f("namespace", "Namespace", Str),
        f("cluster", "Cluster", Str),
        f("partition", "Partition", Str),
    ],
);

// ---------------------------------------------------------------- network

pub(crate) static NETWORK: BlockSpec = block(
    "network",
    None,
    &[
        f("mode", "Mode", Str),
        f("device", "Device", Str),
        f("cidr", "CIDR", Str),
        f("ip", "IP", Str),
        f("dns", "DNS", Block(&DNS)),
        f(
            "reserved_ports",
            "ReservedPorts",
            Rejected("declare ports with `port \"label\" { static = N }` instead"),
        ),
        f("port", "DynamicPorts", Blocks(&PORT)),
        f("hostname", "Hostname", Str),
        f("mbits", "MBits", Int),
        f("cni", "CNI", Block(&CNI)),
    ],
);

static PORT: BlockSpec = block(
    "port",
    Some("Label"),
    &[
        f("static", "Value", Int),
        f("to", "To", Int),
        f("host_network", "HostNetwork", Str),
        f("ignore_collision", "IgnoreCollision", Bool),
    ],
);

static DNS: BlockSpec = block(
    "dns",
    None,
    &[
        f("servers", "Servers", StrList),
        f("searches", "Searches", StrList),
        f("options", "Options", StrList),
    ],
);

static CNI: BlockSpec = block("cni", None, &[f("args", "Args", StrMap)]);

// ---------------------------------------------------------------- task

pub(crate) static TASK: BlockSpec = block(
    "task",
    Some("Name"),
    &[
        f("driver", "Driver", Str),
        f("user", "User", Str),
        f("lifecycle", "Lifecycle", Block(&LIFECYCLE)),
        f("config", "Config", Config),
        f("constraint", "Constraints", Blocks(&CONSTRAINT)),
        f("affinity", "Affinities", Blocks(&AFFINITY)),
        f("env", "Env", StrMap),
        f("service", "Services", Blocks(&SERVICE)),
        f("resources", "Resources", Block(&RESOURCES)),
        f("restart", "RestartPolicy", Block(&RESTART)),
        f("meta", "Meta", StrMap),
        f("kill_timeout", "KillTimeout", Duration),
        f("logs", "LogConfig", Block(&LOGS)),
        f("artifact", "Artifacts", Blocks(&ARTIFACT)),
        f("vault", "Vault", Block(&VAULT)),
        f("consul", "Consul", Block(&CONSUL)),
        f("template", "Templates", Blocks(&TEMPLATE)),
        f(
            "dispatch_payload",
            "DispatchPayload",
            Block(&DISPATCH_PAYLOAD),
        ),
        f("volume_mount", "VolumeMounts", Blocks(&VOLUME_MOUNT)),
        f("leader", "Leader", Bool),
        f("shutdown_delay", "ShutdownDelay", Duration),
        f("kill_signal", "KillSignal", Str),
        f("kind", "Kind", Str),
        computed("Identity"),
        f("identity", "Identities", Blocks(&IDENTITY)),
        f("action", "Actions", Blocks(&ACTION)),
    ],
);

static LIFECYCLE: BlockSpec = block(
    "lifecycle",
    None,
    &[f("hook", "Hook", Str), f("sidecar", "Sidecar", Bool)],
);

pub(crate) static RESOURCES: BlockSpec = block(
    "resources",
    None,
    &[
        f("cpu", "CPU", Int),
        f("cores", "Cores", Int),
        f("memory", "MemoryMB", Int),
        f("memory_max", "MemoryMaxMB", Int),
        f("disk", "DiskMB", Int),
        f("network", "Networks", Blocks(&NETWORK)),
        f("device", "Devices", Blocks(&DEVICE)),
        f("numa", "NUMA", Block(&NUMA)),
        f("secrets", "SecretsMB", Int),
        f("iops", "IOPS", Int),
    ],
);

static DEVICE: BlockSpec = block(
    "device",
    Some("Name"),
    &[
        f("count", "Count", Int),
        f("constraint", "Constraints", Blocks(&CONSTRAINT)),
        f("affinity", "Affinities", Blocks(&AFFINITY)),
    ],
);

static NUMA: BlockSpec = block(
    "numa",
    None,
    &[
        f("affinity", "Affinity", Str),
        f("devices", "Devices", StrList),
    ],
);

static LOGS: BlockSpec = block(
    "logs",
    None,
    &[
        f("max_files", "MaxFiles", Int),
        f("max_file_size", "MaxFileSizeMB", Int),
        f("enabled", "Enabled", Bool),
        f("disabled", "Disabled", Bool),
    ],
);

static ARTIFACT: BlockSpec = block(
    "artifact",
    None,
    &[
        f("source", "GetterSource", Str),
        f("options", "GetterOptions", StrMap),
        f("headers", "GetterHeaders", StrMap),
        f("mode", "GetterMode", Str),
        f("insecure", "GetterInsecure", Bool),
        f("destination", "RelativeDest", Str),
        f("chown", "Chown", Bool),
    ],
);

pub(crate) static TEMPLATE: BlockSpec = block(
    "template",
    None,
    &[
        f("source", "SourcePath", Str),
        f("destination", "DestPath", Str),
        f("data", "EmbeddedTmpl", Str),
        f("change_mode", "ChangeMode", Str),
        f("change_script", "ChangeScript", Block(&CHANGE_SCRIPT)),
        f("change_signal", "ChangeSignal", Str),
        f("once", "Once", Bool),
        f("splay", "Splay", Duration),
        f("perms", "Perms", Str),
        f("uid", "Uid", Int),
        f("gid", "Gid", Int),
        f("left_delimiter", "LeftDelim", Str),
        f("right_delimiter", "RightDelim", Str),
        f("env", "Envvars", Bool),
        f("vault_grace", "VaultGrace", Duration),
        f("wait", "Wait", Block(&WAIT)),
        f("error_on_missing_key", "ErrMissingKey", Bool),
    ],
);

pub(crate) static CHANGE_SCRIPT: BlockSpec = block(
    "change_script",
    None,
    &[
        f("command", "Command", Str),
        f("args", "Args", StrList),
        f("timeout", "Timeout", Duration),
        f("fail_on_error", "FailOnError", Bool),
        f("run_on_first_render", "RunOnFirstRender", Bool),
    ],
);

static WAIT: BlockSpec = block(
    "wait",
    None,
    &[f("min", "Min", Duration), f("max", "Max", Duration)],
);

pub(crate) static VAULT: BlockSpec = block(
    "vault",
    None,
    &[
        f("policies", "Policies", StrList),
        f("role", "Role", Str),
        f("namespace", "Namespace", Str),
        f("cluster", "Cluster", Str),
        f("env", "Env", Bool),
        f("disable_file", "DisableFile", Bool),
        f("change_mode", "ChangeMode", Str),
        f("change_signal", "ChangeSignal", Str),
        f("allow_token_expiration", "AllowTokenExpiration", Bool),
    ],
);

static DISPATCH_PAYLOAD: BlockSpec = block("dispatch_payload", None, &[f("file", "File", Str)]);

static VOLUME_MOUNT: BlockSpec = block(
    "volume_mount",
    None,
    &[
        f("volume", "Volume", Str),
        f("destination", "Destination", Str),
        f("read_only", "ReadOnly", Bool),
        f("propagation_mode", "PropagationMode", Str),
        f("selinux_label", "SELinuxLabel", Str),
    ],
);

static IDENTITY: BlockSpec = block(
    "identity",
    None,
    &[
        f("name", "Name", Str),
        f("aud", "Audience", StrList),
        f("change_mode", "ChangeMode", Str),
        f("change_signal", "ChangeSignal", Str),
        f("env", "Env", Bool),
        f("file", "File", Bool),
        f("filepath", "Filepath", Str),
        f("service_name", "ServiceName", Str),
        f("ttl", "TTL", Duration),
        f("extra_claims", "ExtraClaims", StrList),
    ],
);

static ACTION: BlockSpec = block(
    "action",
    Some("Name"),
    &[f("command", "Command", Str), f("args", "Args", StrList)],
);

// ---------------------------------------------------------------- services

static SERVICE: BlockSpec = block(
    "service",
    None,
    &[
        f("name", "Name", Str),
        f("tags", "Tags", StrList),
        f("canary_tags", "CanaryTags", StrList),
        f("enable_tag_override", "EnableTagOverride", Bool),
        f("port", "PortLabel", Str),
        f("address_mode", "AddressMode", Str),
        f("address", "Address", Str),
        f("check", "Checks", Blocks(&CHECK)),
        f("check_restart", "CheckRestart", Block(&CHECK_RESTART)),
        f("connect", "Connect", Block(&CONNECT)),
        f("meta", "Meta", StrMap),
        f("canary_meta", "CanaryMeta", StrMap),
        f("tagged_addresses", "TaggedAddresses", StrMap),
        f("task", "TaskName", Str),
        f("on_update", "OnUpdate", Str),
        f("identity", "Identity", Block(&IDENTITY)),
        f("weights", "Weights", Block(&WEIGHTS)),
        f("provider", "Provider", Str),
        f("cluster", "Cluster", Str),
        f("kind", "Kind", Str),
    ],
);

static CHECK: BlockSpec = block(
    "check",
    None,
    &[
        f("name", "Name", Str),
        f("type", "Type", Str),
        f("command", "Command", Str),
        f("args", "Args", StrList),
        f("path", "Path", Str),
        f("protocol", "Protocol", Str),
        f("port", "PortLabel", Str),
        f("expose", "Expose", Bool),
        f("address_mode", "AddressMode", Str),
        f("advertise", "Advertise", Str),
        f("interval", "Interval", Duration),
        f("timeout", "Timeout", Duration),
        f("initial_status", "InitialStatus", Str),
        f("notes", "Notes", Str),
        f("tls_server_name", "TLSServerName", Str),
        f("tls_skip_verify", "TLSSkipVerify", Bool),
        f("header", "Header", ListMap),
        f("method", "Method", Str),
        f("check_restart", "CheckRestart", Block(&CHECK_RESTART)),
        f("grpc_service", "GRPCService", Str),
        f("grpc_use_tls", "GRPCUseTLS", Bool),
        f("task", "TaskName", Str),
        f("success_before_passing", "SuccessBeforePassing", Int),
        f("failures_before_critical", "FailuresBeforeCritical", Int),
        f("failures_before_warning", "FailuresBeforeWarning", Int),
        f("body", "Body", Str),
        f("on_update", "OnUpdate", Str),
    ],
);

static CHECK_RESTART: BlockSpec = block(
    "check_restart",
    None,
    &[
        f("limit", "Limit", Int),
        f("grace", "Grace", Duration),
        f("ignore_warnings", "IgnoreWarnings", Bool),
    ],
);

static WEIGHTS: BlockSpec = block(
    "weights",
    None,
    &[f("passing", "Passing", Int), f("warning", "Warning", Int)],
);

static CONNECT: BlockSpec = block(
    "connect",
    None,
    &[
        f("native", "Native", Bool),
        f(
            "gateway",
            "Gateway",
            Rejected("Consul Connect gateways are not supported by this parser"),
        ),
        f("sidecar_service", "SidecarService", Block(&SIDECAR_SERVICE)),
        f("sidecar_task", "SidecarTask", Block(&SIDECAR_TASK)),
    ],
);

static SIDECAR_SERVICE: BlockSpec = block(
    "sidecar_service",
    None,
    &[
        f("tags", "Tags", StrList),
        f("port", "Port", Str),
        f("proxy", "Proxy", Block(&PROXY)),
        f("disable_default_tcp_check", "DisableDefaultTCPCheck", Bool),
        f("meta", "Meta", StrMap),
    ],
);

static SIDECAR_TASK: BlockSpec = block(
    "sidecar_task",
    None,
    &[
        f("name", "Name", Str),
        f("driver", "Driver", Str),
        f("user", "User", Str),
        f("config", "Config", Config),
        f("env", "Env", StrMap),
        f("resources", "Resources", Block(&RESOURCES)),
        f("meta", "Meta", StrMap),
        f("kill_timeout", "KillTimeout", Duration),
        f("logs", "LogConfig", Block(&LOGS)),
        f("shutdown_delay", "ShutdownDelay", Duration),
        f("kill_signal", "KillSignal", Str),
        f("volume_mount", "VolumeMounts", Blocks(&VOLUME_MOUNT)),
        f("identity", "Identities", Blocks(&IDENTITY)),
    ],
);

static PROXY: BlockSpec = block(
    "proxy",
    None,
    &[
        f("local_service_address", "LocalServiceAddress", Str),
        f("local_service_port", "LocalServicePort", Int),
        f("expose", "Expose", Block(&EXPOSE)),
        f("upstreams", "Upstreams", Blocks(&UPSTREAM)),
        f(
            "transparent_proxy",
            "TransparentProxy",
            Block(&TRANSPARENT_PROXY),
        ),
        f("config", "Config", Config),
    ],
);

static EXPOSE: BlockSpec = block("expose", None, &[f("path", "Paths", Blocks(&EXPOSE_PATH))]);

static EXPOSE_PATH: BlockSpec = block(
    "path",
    None,
    &[
        f("path", "Path", Str),
        f("protocol", "Protocol", Str),
        f("local_path_port", "LocalPathPort", Int),
        f("listener_port", "ListenerPort", Str),
    ],
);

static UPSTREAM: BlockSpec = block(
    "upstreams",
    None,
    &[
        f("destination_name", "DestinationName", Str),
        f("destination_namespace", "DestinationNamespace", Str),
        f("destination_peer", "DestinationPeer", Str),
        f("destination_partition", "DestinationPartition", Str),
        f("destination_type", "DestinationType", Str),
        f("local_bind_port", "LocalBindPort", Int),
        f("datacenter", "Datacenter", Str),
        f("local_bind_address", "LocalBindAddress", Str),
        f("local_bind_socket_path", "LocalBindSocketPath", Str),
        f("local_bind_socket_mode", "LocalBindSocketMode", Str),
        f("mesh_gateway", "MeshGateway", Block(&MESH_GATEWAY)),
        f("config", "Config", Config),
    ],
);

static MESH_GATEWAY: BlockSpec = block("mesh_gateway", None, &[f("mode", "Mode", Str)]);

static TRANSPARENT_PROXY: BlockSpec = block(
    "transparent_proxy",
    None,
    &[
        f("uid", "UID", Str),
        f("outbound_port", "OutboundPort", Int),
        f("exclude_inbound_ports", "ExcludeInboundPorts", StrList),
        f("exclude_outbound_ports", "ExcludeOutboundPorts", IntList),
        f("exclude_outbound_cidrs", "ExcludeOutboundCIDRs", StrList),
        f("exclude_uids", "ExcludeUIDs", StrList),
        f("no_dns", "NoDNS", Bool),
    ],
);
