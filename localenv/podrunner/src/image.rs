//! Which images the pod runner can run, and how a container of such an image becomes a host
//! command line. An image matches an [`ImageRule`] by prefix (the longest prefix wins); a
//! `--image-map` rule runs the basename of `command[0]` (or the image's own name when the
//! container has no command) from a directory of built binaries, a `--host-image` rule runs
//! `command[0]` from the host `PATH`. The command and args reaching [`invocation`] are already
//! `$(VAR)`-expanded.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Pod;

/// How the images under one prefix are run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRule {
    /// `--image-map PREFIX=BINDIR`: the binaries of these images are built into `bin_dir`.
    Mapped {
        /// Image prefix, e.g. `ghcr.io/hookline/`.
        prefix: String,
        /// Directory holding the executables.
        bin_dir: PathBuf,
    },
    /// `--host-image PREFIX`: `command[0]` is run as given, found on the host `PATH`.
    Host {
        /// Image prefix, e.g. `hookline.test/`.
        prefix: String,
    },
}

impl ImageRule {
    /// Parses the value of `--image-map`, `PREFIX=BINDIR`.
    ///
    /// # Errors
    /// When there is no `=`, or either side is empty.
    pub fn parse_mapped(value: &str) -> Result<Self, String> {
        match value.split_once('=') {
            Some((prefix, dir)) if !prefix.is_empty() && !dir.is_empty() => Ok(Self::Mapped {
                prefix: prefix.to_string(),
                bin_dir: PathBuf::from(dir),
            }),
            _ => Err(format!("expected PREFIX=BINDIR, got {value:?}")),
        }
    }

    /// The image prefix this rule covers.
    pub fn prefix(&self) -> &str {
        match self {
            Self::Mapped { prefix, .. } | Self::Host { prefix } => prefix,
        }
    }
}

/// The rule whose prefix is the longest one `image` starts with.
pub fn rule_for<'a>(image: &str, rules: &'a [ImageRule]) -> Option<&'a ImageRule> {
    rules
        .iter()
        .filter(|r| image.starts_with(r.prefix()))
        .max_by_key(|r| r.prefix().len())
}

/// Whether the pod runner can run every (regular) container of `pod`.
///
/// # Errors
/// The first image no rule covers. Init containers are not run and so not checked.
pub fn runnable(pod: &Pod, rules: &[ImageRule]) -> Result<(), String> {
    let containers = pod
        .spec
        .as_ref()
        .map(|s| s.containers.as_slice())
        .unwrap_or_default();
    if containers.is_empty() {
        return Err("pod has no containers".to_string());
    }
    for c in containers {
        let image = c.image.as_deref().unwrap_or_default();
        if rule_for(image, rules).is_none() {
            return Err(image.to_string());
        }
    }
    Ok(())
}

/// The image's last path segment without tag or digest:
/// `ghcr.io/hookline/hookline-dispatcher:0.1.0` → `hookline-dispatcher`.
pub fn image_binary_name(image: &str) -> &str {
    let without_digest = image.split_once('@').map_or(image, |(name, _)| name);
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    last.split_once(':').map_or(last, |(name, _)| name)
}

/// A resolved command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// The executable: an absolute path for mapped images, a name looked up on `PATH` (or a
    /// path) for host images.
    pub program: PathBuf,
    /// Arguments after the program.
    pub args: Vec<String>,
}

/// The command line for a container whose (expanded) `command` and `args` are given.
///
/// # Errors
/// When the executable cannot be named: a host image without a command, or a `command[0]`
/// with no file name.
pub fn invocation(
    image: &str,
    command: &[String],
    args: &[String],
    rule: &ImageRule,
) -> Result<Invocation, String> {
    match rule {
        ImageRule::Mapped { bin_dir, .. } => match command.split_first() {
            Some((first, rest)) => {
                let name = Path::new(first)
                    .file_name()
                    .ok_or_else(|| format!("command[0] {first:?} names no executable"))?;
                Ok(Invocation {
                    program: bin_dir.join(name),
                    args: concat(rest, args),
                })
            }
            None => {
                let name = image_binary_name(image);
                if name.is_empty() {
                    return Err(format!("image {image:?} names no executable"));
                }
                Ok(Invocation {
                    program: bin_dir.join(name),
                    args: args.to_vec(),
                })
            }
        },
        ImageRule::Host { .. } => match command.split_first() {
            Some((first, rest)) if !first.is_empty() => Ok(Invocation {
                program: PathBuf::from(first),
                args: concat(rest, args),
            }),
            _ => Err(format!(
                "image {image:?} is a host image: the container needs a command (the pod runner \
                 cannot know the image's entrypoint)"
            )),
        },
    }
}

/// The command line of an exec probe. For mapped images `command[0]` is taken from the
/// binary directory when a file of that name is there (`exists` decides), else run as given.
pub fn exec_invocation(
    command: &[String],
    rule: &ImageRule,
    exists: impl Fn(&Path) -> bool,
) -> Option<Invocation> {
    let (first, rest) = command.split_first()?;
    let mut program = PathBuf::from(first);
    if let ImageRule::Mapped { bin_dir, .. } = rule
        && let Some(name) = Path::new(first).file_name()
        && exists(&bin_dir.join(name))
    {
        program = bin_dir.join(name);
    }
    Some(Invocation {
        program,
        args: rest.to_vec(),
    })
}

fn concat(a: &[String], b: &[String]) -> Vec<String> {
    a.iter().chain(b).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn rules() -> Vec<ImageRule> {
        vec![
            ImageRule::parse_mapped("ghcr.io/hookline/=/opt/bin").unwrap(),
            ImageRule::Host {
                prefix: "hookline.test/".into(),
            },
        ]
    }

    #[test]
    fn image_with_tag_resolves_to_binary_in_bin_dir() {
        let inv = invocation(
            "ghcr.io/hookline/hookline:0.1.0",
            &s(&["/usr/local/bin/hookline-dispatcher", "--flag"]),
            &s(&["x"]),
            &rules()[0],
        )
        .unwrap();
        assert_eq!(inv.program, PathBuf::from("/opt/bin/hookline-dispatcher"));
        assert_eq!(inv.args, s(&["--flag", "x"]));
    }

    #[test]
    fn container_without_command_runs_the_binary_named_after_the_image() {
        let inv = invocation(
            "ghcr.io/hookline/hookline-controller:0.1.0",
            &[],
            &s(&["--a"]),
            &rules()[0],
        )
        .unwrap();
        assert_eq!(inv.program, PathBuf::from("/opt/bin/hookline-controller"));
        assert_eq!(inv.args, s(&["--a"]));
    }

    #[test]
    fn image_binary_name_drops_registry_port_tag_and_digest() {
        assert_eq!(image_binary_name("localhost:5000/a/b:1"), "b");
        assert_eq!(image_binary_name("a/b@sha256:abc"), "b");
        assert_eq!(image_binary_name("b"), "b");
        assert_eq!(image_binary_name("reg:5000/b"), "b");
    }

    #[test]
    fn host_image_runs_command_as_given() {
        let inv = invocation(
            "hookline.test/python:3",
            &s(&["python3", "-m"]),
            &s(&["x"]),
            &rules()[1],
        )
        .unwrap();
        assert_eq!(inv.program, PathBuf::from("python3"));
        assert_eq!(inv.args, s(&["-m", "x"]));
    }

    #[test]
    fn host_image_without_command_is_an_error() {
        assert!(invocation("hookline.test/python:3", &[], &s(&["x"]), &rules()[1]).is_err());
    }

    #[test]
    fn longest_matching_prefix_wins() {
        let mut r = rules();
        r.push(ImageRule::Host {
            prefix: "ghcr.io/hookline/tools".into(),
        });
        assert_eq!(
            rule_for("ghcr.io/hookline/tools:1", &r).unwrap().prefix(),
            "ghcr.io/hookline/tools"
        );
        assert_eq!(
            rule_for("ghcr.io/hookline/x:1", &r).unwrap().prefix(),
            "ghcr.io/hookline/"
        );
        assert!(rule_for("docker.io/nginx", &r).is_none());
    }

    #[test]
    fn image_map_without_equals_sign_is_rejected() {
        assert!(ImageRule::parse_mapped("ghcr.io/hookline").is_err());
        assert!(ImageRule::parse_mapped("=/bin").is_err());
    }

    #[test]
    fn pod_with_one_foreign_image_is_not_runnable() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [
                {"name": "a", "image": "hookline.test/x"},
                {"name": "b", "image": "nginx:1"}
            ]}
        }))
        .unwrap();
        assert_eq!(runnable(&pod, &rules()), Err("nginx:1".to_string()));
    }

    #[test]
    fn exec_probe_command_prefers_the_bin_dir() {
        let inv = exec_invocation(&s(&["/bin/check", "a"]), &rules()[0], |p| {
            p == Path::new("/opt/bin/check")
        })
        .unwrap();
        assert_eq!(inv.program, PathBuf::from("/opt/bin/check"));
        let inv = exec_invocation(&s(&["cat", "f"]), &rules()[0], |_| false).unwrap();
        assert_eq!(inv.program, PathBuf::from("cat"));
    }
}
