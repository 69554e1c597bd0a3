//! What ECS wants of this task, decided from what `DescribeServices` (and, when a choice among
//! tasks is needed, `ListTasks` + `DescribeTasks`) say. Pure functions: every task of the fleet
//! computes the same answer from the same facts.
//!
//! - **Deployment**: a task whose task definition is not the PRIMARY deployment's is old. Old
//!   tasks yield as the rolling deployment can use their place: one for each new task already
//!   running beyond the desired count (`maximumPercent` 200: the new tasks start first, so the old
//!   ones go only once their replacements run), and, when the new deployment cannot start more
//!   tasks because the fleet is at `maximumPercent`, as many as it needs room for, never below
//!   `minimumHealthyPercent` (`maximumPercent` 100: ECS must stop old tasks first, so waiting for
//!   new ones would deadlock).
//! - **Scale-in**: the PRIMARY deployment runs more tasks than it wants: exactly that excess
//!   yields.
//! - In both, the tasks that yield are the first ones in one order every task can compute: newest
//!   `startedAt` first, task ARN to break ties (the longest-running tasks stay).

use std::cmp::Reverse;

/// Why a task yields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Reason {
    /// Its task definition is not the primary deployment's.
    Deployment,
    /// The service runs more tasks than its desired count.
    ScaleIn,
    /// The agent refused protection because protected tasks block a deployment or scale-in.
    AgentBlocked,
    /// Protection was held `--max-protected` without a break.
    MaxProtected,
    /// Asked by an operator (`queue-worker drain`, SIGUSR1).
    Operator,
}

impl Reason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Reason::Deployment => "deployment",
            Reason::ScaleIn => "scale-in",
            Reason::AgentBlocked => "agent-blocked",
            Reason::MaxProtected => "max-protected",
            Reason::Operator => "operator",
        }
    }
}

/// One deployment of the service, as `DescribeServices` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Deployment {
    pub primary: bool,
    pub task_definition: String,
    pub desired: u32,
    pub running: u32,
    pub pending: u32,
}

/// The service, as `DescribeServices` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServiceFacts {
    pub desired: u32,
    pub maximum_percent: u32,
    pub minimum_healthy_percent: u32,
    pub deployments: Vec<Deployment>,
}

/// One running task of the service (`ListTasks` + `DescribeTasks`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TaskFacts {
    pub arn: String,
    pub task_definition: String,
    /// Epoch milliseconds; `None` while it has not started.
    pub started_at: Option<i64>,
}

/// This task, as task metadata describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Me {
    pub arn: String,
    pub task_definition: String,
}

/// What the facts of `DescribeServices` alone say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum First {
    /// Nothing for this task to do.
    Stay,
    /// Every task of this task's group yields: no need to list them.
    YieldAll(Reason),
    /// `count` of this task's group yield: list them to see whether this task is one. `of` is
    /// how many tasks the group runs by the same facts.
    Choose { reason: Reason, count: u32, of: u32 },
}

/// Whether `arn` ends with `family:revision` of `task_definition` (ARNs and `family:revision`
/// forms compare equal).
pub(crate) fn same_task_definition(a: &str, b: &str) -> bool {
    let tail = |s: &str| s.rsplit('/').next().unwrap_or(s).to_string();
    tail(a) == tail(b)
}

/// The first step, from `DescribeServices`: stay, all yield, or choose `count` of this task's
/// group (the old tasks in a deployment, the primary's tasks in a scale-in).
pub(crate) fn first(service: &ServiceFacts, me: &Me) -> First {
    let Some(primary) = service.deployments.iter().find(|d| d.primary) else {
        return First::Stay;
    };
    let desired = service.desired;
    if !same_task_definition(&primary.task_definition, &me.task_definition) {
        let old: u32 = service
            .deployments
            .iter()
            .filter(|d| !d.primary)
            .map(|d| d.running)
            .sum();
        let count = old_to_yield(service, primary, old);
        return match count {
            0 => First::Stay,
            n if n >= old => First::YieldAll(Reason::Deployment),
            n => First::Choose {
                reason: Reason::Deployment,
                count: n,
                of: old,
            },
        };
    }
    let excess = primary.running.saturating_sub(primary.desired.min(desired));
    match excess {
        0 => First::Stay,
        n => First::Choose {
            reason: Reason::ScaleIn,
            count: n,
            of: primary.running,
        },
    }
}

/// How many old tasks may go now, of `old` still running.
fn old_to_yield(service: &ServiceFacts, primary: &Deployment, old: u32) -> u32 {
    let desired = service.desired;
    let (new_running, new_pending) = (primary.running, primary.pending);
    // A new task running beyond the desired count replaces an old one.
    let replaced = (old + new_running).saturating_sub(desired);
    // At maximumPercent the deployment can start no more new tasks until old ones go; never
    // below minimumHealthyPercent, which ECS keeps running anyway.
    let ceiling = desired * service.maximum_percent / 100;
    let healthy_floor = (desired * service.minimum_healthy_percent).div_ceil(100);
    let wanted_new = primary.desired.saturating_sub(new_running + new_pending);
    let room = if wanted_new > 0 && old + new_running + new_pending >= ceiling {
        wanted_new
            .min(old)
            .min((old + new_running).saturating_sub(healthy_floor))
    } else {
        0
    };
    replaced.max(room).min(old)
}

/// The second step: of `tasks` (this task's group, desired status RUNNING), the first `count`
/// in the fleet's order yield. Returns whether this task is one of them; `None` when this task
/// is not in the list (the views disagree: decide again at the next look).
///
/// `of` is the group's size when `count` was worked out. Tasks missing from the list already
/// have ECS's stop order (`DescribeServices` still counts them as running for a while), so they
/// count as yielded: otherwise the list's newest tasks, ones that are meant to stay, would take
/// their place.
pub(crate) fn chosen(tasks: &[TaskFacts], me: &Me, count: u32, of: u32) -> Option<bool> {
    let listed = u32::try_from(tasks.len()).unwrap_or(u32::MAX);
    let count = count.saturating_sub(of.saturating_sub(listed));
    let mut order: Vec<&TaskFacts> = tasks.iter().collect();
    order.sort_by(|a, b| (Reverse(a.started_at), &a.arn).cmp(&(Reverse(b.started_at), &b.arn)));
    let place = order.iter().position(|t| t.arn == me.arn)?;
    Some(place < count as usize)
}

/// This task's group among `tasks`: the old ones (not the primary's task definition) or the
/// primary's, as `first` chose.
pub(crate) fn group(tasks: &[TaskFacts], service: &ServiceFacts, reason: Reason) -> Vec<TaskFacts> {
    let primary = service
        .deployments
        .iter()
        .find(|d| d.primary)
        .map(|d| d.task_definition.as_str())
        .unwrap_or_default();
    tasks
        .iter()
        .filter(|t| {
            let is_primary = same_task_definition(&t.task_definition, primary);
            match reason {
                Reason::Deployment => !is_primary,
                _ => is_primary,
            }
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = "arn:aws:ecs:us-east-1:1:task-definition/worker:1";
    const V2: &str = "arn:aws:ecs:us-east-1:1:task-definition/worker:2";

    fn dep(primary: bool, td: &str, desired: u32, running: u32, pending: u32) -> Deployment {
        Deployment {
            primary,
            task_definition: td.into(),
            desired,
            running,
            pending,
        }
    }

    fn service(desired: u32, max: u32, min: u32, deployments: Vec<Deployment>) -> ServiceFacts {
        ServiceFacts {
            desired,
            maximum_percent: max,
            minimum_healthy_percent: min,
            deployments,
        }
    }

    fn me(td: &str) -> Me {
        Me {
            arn: "arn:aws:ecs:us-east-1:1:task/c/me".into(),
            task_definition: td.into(),
        }
    }

    #[test]
    fn a_steady_service_keeps_everyone() {
        let s = service(3, 200, 100, vec![dep(true, V1, 3, 3, 0)]);
        assert_eq!(first(&s, &me(V1)), First::Stay);
        assert_eq!(
            first(&s, &me("worker:1")),
            First::Stay,
            "family:revision form"
        );
    }

    /// What an old task of a 2-task service decides, mid-deployment at `max`/`min` percent, with
    /// `new` = (running, pending) of the new deployment and `old` old tasks running.
    fn old_task_in(max: u32, min: u32, new: (u32, u32), old: u32) -> First {
        let deployments = vec![dep(true, V2, 2, new.0, new.1), dep(false, V1, 2, old, 0)];
        first(&service(2, max, min, deployments), &me(V1))
    }

    fn choose(count: u32) -> First {
        First::Choose {
            reason: Reason::Deployment,
            count,
            of: 2,
        }
    }

    const ALL: First = First::YieldAll(Reason::Deployment);

    #[test]
    fn deployment_at_200_percent_waits_for_the_new_tasks_then_all_old_ones_go() {
        // New tasks starting: the old ones keep working.
        assert_eq!(old_task_in(200, 100, (0, 2), 2), First::Stay);
        // One new task runs: one old one may go. Both run: every old task goes.
        assert_eq!(old_task_in(200, 100, (1, 1), 2), choose(1));
        assert_eq!(old_task_in(200, 100, (2, 0), 2), ALL);
        // The new tasks never yield for a deployment.
        let s = service(
            2,
            200,
            100,
            vec![dep(true, V2, 2, 2, 0), dep(false, V1, 2, 2, 0)],
        );
        assert_eq!(first(&s, &me(V2)), First::Stay);
    }

    #[test]
    fn deployment_at_100_percent_makes_room_first_without_deadlock() {
        // ECS can start no new task until an old one stops: both old ones must make room.
        assert_eq!(old_task_in(100, 0, (0, 0), 2), ALL);
        // With a healthy floor of 50 %, one at a time; once its replacement runs, the last one.
        assert_eq!(old_task_in(100, 50, (0, 0), 2), choose(1));
        assert_eq!(old_task_in(100, 50, (1, 0), 1), ALL);
        // A replacement still starting, at the ceiling: nobody more.
        assert_eq!(old_task_in(150, 100, (0, 1), 2), First::Stay);
    }

    #[test]
    fn scale_in_chooses_exactly_the_excess() {
        for (desired, running, count) in [(4, 8, 4), (0, 3, 3)] {
            let s = service(desired, 200, 100, vec![dep(true, V1, desired, running, 0)]);
            let want = First::Choose {
                reason: Reason::ScaleIn,
                count,
                of: running,
            };
            assert_eq!(first(&s, &me(V1)), want, "{running} -> {desired}");
        }
    }

    fn task(n: u32, started: i64) -> TaskFacts {
        TaskFacts {
            arn: format!("arn:aws:ecs:us-east-1:1:task/c/{n:02}"),
            task_definition: V1.into(),
            started_at: Some(started),
        }
    }

    #[test]
    fn every_task_reaches_the_same_choice_newest_first() {
        let tasks: Vec<TaskFacts> = (0..8).map(|n| task(n, 1000 + i64::from(n % 4))).collect();
        let picked: Vec<u32> = (0..8)
            .filter(|n| {
                let me = Me {
                    arn: tasks[*n as usize].arn.clone(),
                    task_definition: V1.into(),
                };
                chosen(&tasks, &me, 4, 8).expect("listed")
            })
            .collect();
        // Started 1003 (3, 7) and 1002 (2, 6) are the newest four.
        assert_eq!(picked, vec![2, 3, 6, 7]);
        // In any listing order, the same four.
        let mut shuffled = tasks.clone();
        shuffled.reverse();
        for n in 0..8u32 {
            let me = Me {
                arn: tasks[n as usize].arn.clone(),
                task_definition: V1.into(),
            };
            assert_eq!(
                chosen(&shuffled, &me, 4, 8),
                Some(picked.contains(&n)),
                "task {n}"
            );
        }
        let stranger = Me {
            arn: "arn:aws:ecs:us-east-1:1:task/c/zz".into(),
            task_definition: V1.into(),
        };
        assert_eq!(chosen(&tasks, &stranger, 4, 8), None);
    }

    #[test]
    fn tasks_already_stopping_count_as_yielded_while_describe_services_lags() {
        // DescribeServices still counts 8 running for 4 wanted, but the 4 newest already have
        // their stop order and are gone from the list: none of the 4 listed may yield.
        let tasks: Vec<TaskFacts> = (0..8).map(|n| task(n, 1000 + i64::from(n))).collect();
        let stayers = &tasks[..4];
        for t in stayers {
            let me = Me {
                arn: t.arn.clone(),
                task_definition: V1.into(),
            };
            assert_eq!(chosen(stayers, &me, 4, 8), Some(false), "{}", t.arn);
        }
        // Two of the four gone: the next two newest go, the two oldest stay.
        let six = &tasks[..6];
        let picked: Vec<usize> = (0..6)
            .filter(|n| {
                let me = Me {
                    arn: six[*n].arn.clone(),
                    task_definition: V1.into(),
                };
                chosen(six, &me, 4, 8).expect("listed")
            })
            .collect();
        assert_eq!(picked, vec![4, 5]);
    }

    #[test]
    fn the_group_is_the_old_tasks_in_a_deployment_and_the_primarys_in_a_scale_in() {
        let s = service(
            2,
            200,
            100,
            vec![dep(true, V2, 2, 2, 0), dep(false, V1, 2, 2, 0)],
        );
        let mut tasks = vec![task(1, 1), task(2, 2)];
        tasks.push(TaskFacts {
            arn: "arn:aws:ecs:us-east-1:1:task/c/new".into(),
            task_definition: V2.into(),
            started_at: Some(3),
        });
        assert_eq!(group(&tasks, &s, Reason::Deployment).len(), 2);
        assert_eq!(group(&tasks, &s, Reason::ScaleIn).len(), 1);
    }
}
