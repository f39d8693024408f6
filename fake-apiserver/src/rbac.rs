//! RBAC: ClusterRoles, Roles and their bindings, evaluated like the RBAC authorizer.

use serde_json::Value;
use std::collections::{HashMap, HashSet};

#[derive(Debug, Clone)]
struct Rule {
    verbs: Vec<String>,
    api_groups: Vec<String>,
    resources: Vec<String>,
    resource_names: Vec<String>,
}

#[derive(Debug, Clone)]
enum Subject {
    User(String),
    Group(String),
}

#[derive(Debug, Clone)]
struct Binding {
    /// `None` for ClusterRoleBindings.
    namespace: Option<String>,
    role_kind: String,
    role_name: String,
    subjects: Vec<Subject>,
}

/// What a request asks to do, as the authorizer sees it.
#[derive(Debug, Clone)]
pub struct Attributes<'a> {
    pub user: &'a str,
    pub verb: &'a str,
    pub group: &'a str,
    pub resource: &'a str,
    pub subresource: &'a str,
    pub namespace: Option<&'a str>,
    pub name: Option<&'a str>,
}

/// A set of RBAC objects. Build it from the JSON of `ClusterRole`, `Role`,
/// `ClusterRoleBinding` and `RoleBinding` objects (e.g. a deploy manifest converted from YAML).
#[derive(Debug, Clone, Default)]
pub struct RbacPolicy {
    cluster_roles: HashMap<String, Vec<Rule>>,
    roles: HashMap<(String, String), Vec<Rule>>,
    bindings: Vec<Binding>,
    superusers: HashSet<String>,
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn rules(obj: &Value) -> Vec<Rule> {
    obj.get("rules")
        .and_then(Value::as_array)
        .map(|rs| {
            rs.iter()
                .map(|r| Rule {
                    verbs: strings(r.get("verbs")),
                    api_groups: strings(r.get("apiGroups")),
                    resources: strings(r.get("resources")),
                    resource_names: strings(r.get("resourceNames")),
                })
                .collect()
        })
        .unwrap_or_default()
}

impl RbacPolicy {
    pub fn new() -> RbacPolicy {
        RbacPolicy::default()
    }

    /// Builds a policy from RBAC objects; objects of other kinds are ignored.
    pub fn from_objects<'a>(
        objects: impl IntoIterator<Item = &'a Value>,
    ) -> Result<RbacPolicy, String> {
        let mut p = RbacPolicy::default();
        for o in objects {
            p.add_object(o)?;
        }
        Ok(p)
    }

    /// Adds one RBAC object.
    pub fn add_object(&mut self, obj: &Value) -> Result<(), String> {
        let kind = obj.get("kind").and_then(Value::as_str).unwrap_or_default();
        let md = obj.get("metadata");
        let name = md
            .and_then(|m| m.get("name"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let namespace = md
            .and_then(|m| m.get("namespace"))
            .and_then(Value::as_str)
            .map(str::to_string);
        match kind {
            "ClusterRole" => {
                self.cluster_roles.insert(name, rules(obj));
            }
            "Role" => {
                let ns = namespace.ok_or_else(|| format!("Role {name} has no namespace"))?;
                self.roles.insert((ns, name), rules(obj));
            }
            "ClusterRoleBinding" | "RoleBinding" => {
                let ns = if kind == "RoleBinding" {
                    Some(namespace.ok_or_else(|| format!("RoleBinding {name} has no namespace"))?)
                } else {
                    None
                };
                let role_ref = obj
                    .get("roleRef")
                    .ok_or_else(|| format!("{kind} {name} has no roleRef"))?;
                let subjects = obj
                    .get("subjects")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|s| {
                        let sname = s.get("name")?.as_str()?.to_string();
                        match s.get("kind")?.as_str()? {
                            "ServiceAccount" => {
                                let sns = s
                                    .get("namespace")
                                    .and_then(Value::as_str)
                                    .map(str::to_string)
                                    .or_else(|| ns.clone())?;
                                Some(Subject::User(format!(
                                    "system:serviceaccount:{sns}:{sname}"
                                )))
                            }
                            "User" => Some(Subject::User(sname)),
                            "Group" => Some(Subject::Group(sname)),
                            _ => None,
                        }
                    })
                    .collect();
                self.bindings.push(Binding {
                    namespace: ns,
                    role_kind: role_ref
                        .get("kind")
                        .and_then(Value::as_str)
                        .unwrap_or("ClusterRole")
                        .to_string(),
                    role_name: role_ref
                        .get("name")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string(),
                    subjects,
                });
            }
            _ => {}
        }
        Ok(())
    }

    /// Lets `user` do anything (like a member of `system:masters`).
    pub fn with_superuser(mut self, user: &str) -> RbacPolicy {
        self.superusers.insert(user.to_string());
        self
    }

    fn groups_of(user: &str) -> Vec<String> {
        if user == "system:anonymous" {
            return vec!["system:unauthenticated".into()];
        }
        let mut g = vec!["system:authenticated".to_string()];
        if let Some(rest) = user.strip_prefix("system:serviceaccount:")
            && let Some((ns, _)) = rest.split_once(':')
        {
            g.push("system:serviceaccounts".into());
            g.push(format!("system:serviceaccounts:{ns}"));
        }
        g
    }

    fn rule_allows(rule: &Rule, a: &Attributes) -> bool {
        let any = |list: &[String], v: &str| list.iter().any(|x| x == "*" || x == v);
        if !any(&rule.verbs, a.verb) || !any(&rule.api_groups, a.group) {
            return false;
        }
        let combined = if a.subresource.is_empty() {
            a.resource.to_string()
        } else {
            format!("{}/{}", a.resource, a.subresource)
        };
        let resource_ok = rule.resources.iter().any(|r| {
            r == "*"
                || *r == combined
                || (!a.subresource.is_empty() && r.strip_prefix("*/") == Some(a.subresource))
        });
        if !resource_ok {
            return false;
        }
        if rule.resource_names.is_empty() {
            return true;
        }
        a.name
            .is_some_and(|n| rule.resource_names.iter().any(|x| x == n))
    }

    /// Whether the request is allowed.
    pub fn allows(&self, a: &Attributes) -> bool {
        if self.superusers.contains(a.user) {
            return true;
        }
        let groups = RbacPolicy::groups_of(a.user);
        for b in &self.bindings {
            let matches = b.subjects.iter().any(|s| match s {
                Subject::User(u) => u == a.user,
                Subject::Group(g) => groups.contains(g),
            });
            if !matches {
                continue;
            }
            if let Some(bns) = &b.namespace
                && a.namespace != Some(bns.as_str())
            {
                continue;
            }
            let rules = match (b.role_kind.as_str(), &b.namespace) {
                ("Role", Some(ns)) => self.roles.get(&(ns.clone(), b.role_name.clone())),
                ("ClusterRole", _) => self.cluster_roles.get(&b.role_name),
                _ => None,
            };
            if rules.is_some_and(|rs| rs.iter().any(|r| RbacPolicy::rule_allows(r, a))) {
                return true;
            }
        }
        false
    }
}
