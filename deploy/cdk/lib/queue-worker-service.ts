// QueueWorkerService: queue-worker on ECS Fargate, the same service as
// deploy/cloudformation/queue-worker.yml, built from CDK constructs:
//   - a job queue with a dead-letter queue (redrive after maxReceiveCount), SSE-SQS, TLS only;
//   - a Fargate task definition (CMD health check, StopTimeout 60 s, awslogs JSON logs);
//   - a task role with exactly the actions the worker calls (scripts/check_iam_actions.py
//     checks the synthesized template against src/);
//   - a rolling service with the deployment circuit breaker (rollback on), no ECS Exec;
//   - target tracking on (visible + in-flight messages) / running tasks, and a step policy that
//     starts a task when messages wait while the service is at 0, so it can scale to zero.
//
// import { QueueWorkerService } from './lib/queue-worker-service';
// new QueueWorkerService(this, 'Worker', { image, vpc, concurrency: 10, jobTime: Duration.seconds(30) });

import {
  CfnElement,
  CfnResource,
  Duration,
  Names,
  Size,
  Stack,
  Validations,
  aws_applicationautoscaling as appscaling,
  aws_cloudwatch as cloudwatch,
  aws_cloudwatch_actions as cwActions,
  aws_ec2 as ec2,
  aws_ecs as ecs,
  aws_iam as iam,
  aws_logs as logs,
  aws_sqs as sqs,
} from 'aws-cdk-lib';
import { Construct } from 'constructs';

/** The worker's fixed timings: the ECS stop timeout must stay above its drain deadline. */
const SHUTDOWN_TIMEOUT = Duration.seconds(25); // WORKER_SHUTDOWN_TIMEOUT
const STOP_TIMEOUT = Duration.seconds(60); // SIGTERM -> SIGKILL; Fargate allows at most 120 s
const METRICS_ADDR = '127.0.0.1:9090'; // loopback only: the health check runs in the container
const SSE_SQS = 'SSE-SQS is encryption at rest with an AWS-owned key; no key policy to manage';

/** A checkov suppression in the resource's template metadata, as in the CloudFormation template. */
function skipCheckov(construct: Construct, id: string, comment: string): void {
  (construct.node.defaultChild as CfnResource).addMetadata('checkov', { skip: [{ id, comment }] });
}

export interface QueueWorkerServiceProps {
  /** The worker image, built from this repository's Dockerfile. */
  readonly image: ecs.ContainerImage;
  /** The VPC the tasks run in. */
  readonly vpc: ec2.IVpc;
  /** Where the tasks run. @default the VPC's private subnets */
  readonly subnets?: ec2.SubnetSelection;
  /** The tasks' security group (no inbound rule is needed). @default a new one, outbound only */
  readonly securityGroup?: ec2.ISecurityGroup;
  /** Give tasks a public IP (public subnets without a NAT gateway). @default false */
  readonly assignPublicIp?: boolean;
  /** An existing cluster; it must have Container Insights on. @default a new cluster with it on */
  readonly cluster?: ecs.ICluster;
  /** Jobs one task runs at once (WORKER_CONCURRENCY). @default 10 */
  readonly concurrency?: number;
  /** Fewest tasks; 0 lets the service scale to zero. @default 0 */
  readonly minTasks?: number;
  /** Most tasks. @default 4 */
  readonly maxTasks?: number;
  /** Typical time of one job, for the autoscaling target. @default 30 seconds */
  readonly jobTime?: Duration;
  /** How long a message may take from arrival to done (at least jobTime). @default 60 seconds */
  readonly acceptableLatency?: Duration;
  /** Receives before SQS moves a message to the dead-letter queue. @default 5 */
  readonly maxReceiveCount?: number;
  /** The queue's visibility timeout, also asked for on each receive. @default 60 seconds */
  readonly visibilityTimeout?: Duration;
  /** How long the queue keeps a message. @default 4 days */
  readonly retentionPeriod?: Duration;
  /** Task CPU units. @default 256 */
  readonly cpu?: number;
  /** Task memory in MiB. @default 512 */
  readonly memoryLimitMiB?: number;
  /** How long the worker's logs are kept. @default one month */
  readonly logRetention?: logs.RetentionDays;
  /** The ECS service's name. @default one derived from the construct's path */
  readonly serviceName?: string;
}

export class QueueWorkerService extends Construct {
  /** Send jobs here. */
  public readonly queue: sqs.Queue;
  /** Messages that failed maxReceiveCount times. */
  public readonly deadLetterQueue: sqs.Queue;
  public readonly cluster: ecs.ICluster;
  public readonly service: ecs.FargateService;
  public readonly taskRole: iam.Role;
  /** Backlog per task above which the service scales out: concurrency x latency / job time. */
  public readonly targetBacklogPerTask: number;

  constructor(scope: Construct, id: string, props: QueueWorkerServiceProps) {
    super(scope, id);
    const concurrency = props.concurrency ?? 10;
    const minTasks = props.minTasks ?? 0;
    const maxTasks = props.maxTasks ?? 4;
    const jobSeconds = (props.jobTime ?? Duration.seconds(30)).toSeconds();
    const latencySeconds = (props.acceptableLatency ?? Duration.seconds(60)).toSeconds();
    const visibility = props.visibilityTimeout ?? Duration.seconds(60);
    if (!Number.isInteger(concurrency) || concurrency < 1) throw new Error('concurrency must be a whole number >= 1');
    if (minTasks < 0 || maxTasks < Math.max(1, minTasks)) throw new Error('need 0 <= minTasks <= maxTasks and maxTasks >= 1');
    if (jobSeconds <= 0 || latencySeconds <= 0) throw new Error('jobTime and acceptableLatency must be positive');

    // ---- queues ----------------------------------------------------------------------------
    this.deadLetterQueue = new sqs.Queue(this, 'DeadLetterQueue', {
      // A message keeps its original enqueue time in the DLQ: keep them as long as SQS allows.
      retentionPeriod: Duration.days(14),
      encryption: sqs.QueueEncryption.SQS_MANAGED,
      enforceSSL: true,
    });
    this.queue = new sqs.Queue(this, 'Queue', {
      visibilityTimeout: visibility,
      retentionPeriod: props.retentionPeriod ?? Duration.days(4),
      receiveMessageWaitTime: Duration.seconds(20),
      encryption: sqs.QueueEncryption.SQS_MANAGED,
      enforceSSL: true,
      // SQS dead-letters a message after maxReceiveCount receives; the worker sees the policy at
      // start and leaves dead-lettering to SQS.
      deadLetterQueue: { queue: this.deadLetterQueue, maxReceiveCount: props.maxReceiveCount ?? 5 },
    });
    skipCheckov(this.deadLetterQueue, 'CKV_AWS_27', SSE_SQS);
    skipCheckov(this.queue, 'CKV_AWS_27', SSE_SQS);

    // ---- cluster and logs --------------------------------------------------------------------
    // Container Insights publishes RunningTaskCount and DesiredTaskCount, which autoscaling uses.
    this.cluster =
      props.cluster ??
      new ecs.Cluster(this, 'Cluster', { vpc: props.vpc, containerInsightsV2: ecs.ContainerInsights.ENABLED });
    const logGroup = new logs.LogGroup(this, 'LogGroup', { retention: props.logRetention ?? logs.RetentionDays.ONE_MONTH });
    skipCheckov(logGroup, 'CKV_AWS_158', 'CloudWatch Logs encrypts log data at rest by default; the worker never logs message bodies at info');

    // ---- task role: exactly what the worker calls --------------------------------------------
    // sqs:ReceiveMessage, sqs:DeleteMessage (DeleteMessageBatch), sqs:ChangeMessageVisibility
    // (also the Batch call), sqs:GetQueueAttributes (at start), and ecs:UpdateTaskProtection (the
    // agent endpoint's PUT, made by the agent with this role). Not sqs:SendMessage: the worker
    // dead-letters by itself only with DEAD_LETTER_QUEUE_URL and no redrive policy; this queue
    // has one. Not ecs:GetTaskProtection: the worker never asks the agent (GET).
    // Not grantConsumeMessages(): it adds sqs:GetQueueUrl, which the worker never calls.
    const stack = Stack.of(this);
    const clusterTasks = stack.formatArn({ service: 'ecs', resource: 'task', resourceName: `${this.cluster.clusterName}/*` });
    // The service's name, fixed here so that the task role can name the service before it exists.
    const serviceName = props.serviceName ?? Names.uniqueResourceName(this, { maxLength: 64 });
    this.taskRole = new iam.Role(this, 'TaskRole', {
      description: 'queue-worker tasks',
      assumedBy: new iam.ServicePrincipal('ecs-tasks.amazonaws.com', {
        conditions: {
          StringEquals: { 'aws:SourceAccount': stack.account },
          ArnLike: { 'aws:SourceArn': stack.formatArn({ service: 'ecs', resource: '*' }) },
        },
      }),
      inlinePolicies: {
        'queue-worker': new iam.PolicyDocument({
          statements: [
            new iam.PolicyStatement({
              sid: 'ConsumeQueue',
              actions: ['sqs:ReceiveMessage', 'sqs:DeleteMessage', 'sqs:ChangeMessageVisibility', 'sqs:GetQueueAttributes'],
              resources: [this.queue.queueArn],
            }),
            // A task ARN is task/<cluster>/<id> and does not name its service: this cluster's tasks.
            new iam.PolicyStatement({
              sid: 'TaskScaleInProtection',
              actions: ['ecs:UpdateTaskProtection'],
              resources: [clusterTasks],
            }),
            // Yielding to deployments and scale-ins: the worker reads its own service (named
            // below, so the grant exists before any task runs) and, when it must choose which
            // tasks give way, lists and describes the service's tasks.
            new iam.PolicyStatement({
              sid: 'YieldToEcs',
              actions: ['ecs:DescribeServices'],
              resources: [
                stack.formatArn({ service: 'ecs', resource: 'service', resourceName: `${this.cluster.clusterName}/${serviceName}` }),
              ],
            }),
            new iam.PolicyStatement({ sid: 'YieldToEcsTasks', actions: ['ecs:DescribeTasks'], resources: [clusterTasks] }),
            // ListTasks has no resource of its own; its ecs:cluster condition keeps it to this cluster.
            new iam.PolicyStatement({
              sid: 'YieldToEcsList',
              actions: ['ecs:ListTasks'],
              resources: ['*'],
              conditions: { ArnEquals: { 'ecs:cluster': this.cluster.clusterArn } },
            }),
          ],
        }),
      },
    });

    // ---- task definition -----------------------------------------------------------------------
    // The execution role is CDK's: it gets exactly the log group's and the image's pull grants.
    const taskDefinition = new ecs.FargateTaskDefinition(this, 'TaskDefinition', {
      cpu: props.cpu ?? 256,
      memoryLimitMiB: props.memoryLimitMiB ?? 512,
      runtimePlatform: { operatingSystemFamily: ecs.OperatingSystemFamily.LINUX, cpuArchitecture: ecs.CpuArchitecture.X86_64 },
      taskRole: this.taskRole,
    });
    taskDefinition.addContainer('worker', {
      containerName: 'worker',
      image: props.image,
      essential: true,
      // The worker writes no files; an --exec handler that does needs a volume.
      readonlyRootFilesystem: true,
      // SIGTERM, then SIGKILL after this: covers the 25 s drain, a long poll being abandoned
      // (up to 20 s) and the final visibility resets.
      stopTimeout: STOP_TIMEOUT,
      // Distroless image: no shell, so CMD, never CMD-SHELL.
      healthCheck: {
        command: ['CMD', '/usr/local/bin/queue-worker', 'health'],
        interval: Duration.seconds(10),
        timeout: Duration.seconds(5),
        retries: 3,
        startPeriod: Duration.seconds(15),
      },
      logging: ecs.LogDrivers.awsLogs({
        logGroup,
        streamPrefix: 'worker',
        // A slow CloudWatch Logs must never stall jobs or the protection refresh.
        mode: ecs.AwsLogDriverMode.NON_BLOCKING,
        maxBufferSize: Size.mebibytes(25),
      }),
      // The Copilot manifest's variables with QUEUE_URL instead of COPILOT_QUEUE_URI; no
      // DEAD_LETTER_QUEUE_URL or WORKER_MAX_RECEIVES: SQS's redrive policy dead-letters.
      environment: {
        QUEUE_URL: this.queue.queueUrl,
        WORKER_LOG_FORMAT: 'json',
        WORKER_METRICS_ADDR: METRICS_ADDR,
        WORKER_CONCURRENCY: String(concurrency),
        WORKER_WAIT_TIME: '20s',
        WORKER_VISIBILITY_TIMEOUT: `${visibility.toSeconds()}s`,
        WORKER_SHUTDOWN_TIMEOUT: `${SHUTDOWN_TIMEOUT.toSeconds()}s`,
        WORKER_PROTECTION: 'auto',
        WORKER_PROTECT: 'before-receive',
        WORKER_PROTECTION_DURATION: '5m',
        WORKER_IDLE_WINDOW: '5s',
      },
    });

    // ---- service ---------------------------------------------------------------------------------
    // No desiredCount: autoscaling owns it (a create starts 1 task; updates leave the count alone).
    // A task that holds scale-in protection also holds up a rolling deployment until it releases.
    this.service = new ecs.FargateService(this, 'Service', {
      serviceName,
      cluster: this.cluster,
      taskDefinition,
      platformVersion: ecs.FargatePlatformVersion.LATEST,
      vpcSubnets: props.subnets,
      securityGroups: props.securityGroup ? [props.securityGroup] : undefined,
      assignPublicIp: props.assignPublicIp ?? false,
      minHealthyPercent: 100,
      maxHealthyPercent: 200,
      circuitBreaker: { enable: true, rollback: true },
      enableExecuteCommand: false,
      enableECSManagedTags: true,
      propagateTags: ecs.PropagatedTagSource.SERVICE,
    });

    // ---- autoscaling -----------------------------------------------------------------------------
    // A ScalableTarget of our own (not service.autoScaleTaskCount()), because the target tracking
    // policy below is metric math, which CDK's TargetTrackingScalingPolicy does not render: it
    // is written as the L1 CfnScalingPolicy on this target. Application Auto Scaling acts through
    // its service-linked role for ECS, as when CloudFormation leaves RoleARN out.
    const scalableTarget = new appscaling.ScalableTarget(this, 'ScalableTarget', {
      serviceNamespace: appscaling.ServiceNamespace.ECS,
      scalableDimension: 'ecs:service:DesiredCount',
      resourceId: `service/${this.cluster.clusterName}/${this.service.serviceName}`,
      minCapacity: minTasks,
      maxCapacity: maxTasks,
      role: iam.Role.fromRoleArn(
        this,
        'AutoScalingServiceLinkedRole',
        stack.formatArn({
          service: 'iam',
          region: '',
          resource: 'role/aws-service-role/ecs.application-autoscaling.amazonaws.com',
          resourceName: 'AWSServiceRoleForApplicationAutoScaling_ECSService',
        }),
      ),
    });
    const serviceDimensions = [
      { name: 'ClusterName', value: this.cluster.clusterName },
      { name: 'ServiceName', value: this.service.serviceName },
    ];
    const queueDimensions = [{ name: 'QueueName', value: this.queue.queueName }];

    // Backlog per task, counting messages in flight too: (visible + not visible) / running tasks.
    // Counting only visible ones (as Copilot does) makes a fleet busy with long jobs look idle.
    // Target: concurrency x acceptable latency / job time messages per task. A task finishes
    // `concurrency` jobs every job time, so with that many messages (in flight + waiting) its
    // last one is done within the acceptable latency; latency = job time is a slot for every
    // message. (The CloudFormation template has no arithmetic, so there the metric is divided
    // by this target and the target is 100: the same policy.)
    // Running tasks: ECS/ContainerInsights RunningTaskCount; AWS/ECS publishes no task count.
    this.targetBacklogPerTask = (concurrency * latencySeconds) / jobSeconds;
    new appscaling.CfnScalingPolicy(this, 'BacklogTargetTracking', {
      policyName: `${stack.stackName}-${id}-backlog-per-task`,
      policyType: 'TargetTrackingScaling',
      scalingTargetId: scalableTarget.scalableTargetId,
      targetTrackingScalingPolicyConfiguration: {
        targetValue: this.targetBacklogPerTask,
        scaleOutCooldown: 60,
        scaleInCooldown: 300,
        customizedMetricSpecification: {
          metrics: [
            {
              id: 'visible',
              returnData: false,
              metricStat: {
                stat: 'Sum',
                metric: { namespace: 'AWS/SQS', metricName: 'ApproximateNumberOfMessagesVisible', dimensions: queueDimensions },
              },
            },
            {
              id: 'inflight',
              returnData: false,
              metricStat: {
                stat: 'Sum',
                metric: { namespace: 'AWS/SQS', metricName: 'ApproximateNumberOfMessagesNotVisible', dimensions: queueDimensions },
              },
            },
            {
              id: 'tasks',
              returnData: false,
              metricStat: {
                stat: 'Average',
                metric: { namespace: 'ECS/ContainerInsights', metricName: 'RunningTaskCount', dimensions: serviceDimensions },
              },
            },
            { id: 'backlog', label: 'Backlog per task', returnData: true, expression: '(visible + inflight) / tasks' },
          ],
        },
      },
    });

    // Scale from zero: with no task running the backlog per task has no data, and target tracking
    // never acts without data. When messages wait while the desired count is 0 (a missing count
    // reads as 0), set the capacity to 1; target tracking takes over from there. It acts only at
    // 0, so it never lowers a count.
    const fromZero = new appscaling.StepScalingAction(this, 'ScaleFromZeroPolicy', {
      scalingTarget: scalableTarget,
      policyName: `${stack.stackName}-${id}-scale-from-zero`,
      adjustmentType: appscaling.AdjustmentType.EXACT_CAPACITY,
      cooldown: Duration.minutes(1),
      metricAggregationType: appscaling.MetricAggregationType.MAXIMUM,
    });
    fromZero.addAdjustment({ lowerBound: 0, adjustment: 1 });
    const minute = Duration.minutes(1);
    const waitingAtZero = new cloudwatch.Alarm(this, 'ScaleFromZeroAlarm', {
      alarmDescription: 'Messages are waiting while the service runs no task: start one',
      metric: new cloudwatch.MathExpression({
        label: 'Messages waiting while the service is at 0 (1 = start a task)',
        expression: 'IF(visible > 0 AND FILL(desired, 0) == 0, 1, 0)',
        period: minute,
        usingMetrics: {
          visible: this.queue.metricApproximateNumberOfMessagesVisible({ statistic: 'Maximum', period: minute }),
          desired: new cloudwatch.Metric({
            namespace: 'ECS/ContainerInsights',
            metricName: 'DesiredTaskCount',
            dimensionsMap: { ClusterName: this.cluster.clusterName, ServiceName: this.service.serviceName },
            statistic: 'Maximum',
            period: minute,
          }),
        },
      }),
      comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
      threshold: 1,
      evaluationPeriods: 1,
      datapointsToAlarm: 1,
      treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
    });
    waitingAtZero.addAlarmAction(new cwActions.ApplicationScalingAction(fromZero));

    this.acknowledgeNagFindings(taskDefinition);
  }

  /** cdk-nag's AwsSolutions findings on this service that stay, each with its reason. */
  private acknowledgeNagFindings(taskDefinition: ecs.FargateTaskDefinition): void {
    Validations.of(taskDefinition).acknowledge({
      id: 'AwsSolutions::AwsSolutions-ECS2',
      reason: 'The environment holds settings and the queue URL, never secrets (those would go in `secrets`).',
    });
    // UpdateTaskProtection takes a task ARN, and a task ARN (task/<cluster>/<id>) does not name
    // its service: this cluster's tasks is the narrowest resource there is.
    const clusterRef = this.cluster.node.defaultChild ? `<${Stack.of(this).getLogicalId(this.cluster.node.defaultChild as CfnElement)}>` : this.cluster.clusterName;
    Validations.of(this.taskRole).acknowledge({
      id: `AwsSolutions::AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:ecs:<AWS::Region>:<AWS::AccountId>:task/${clusterRef}/*]`,
      reason: 'UpdateTaskProtection and DescribeTasks take task ARNs, which do not name their service: the tasks of this cluster.',
    });
    Validations.of(this.taskRole).acknowledge({
      id: 'AwsSolutions::AwsSolutions-IAM5[Resource::*]',
      reason: 'ecs:ListTasks has no resource type; the ecs:cluster condition keeps it to this cluster.',
    });
    if (taskDefinition.executionRole) {
      Validations.of(taskDefinition.executionRole).acknowledge({
        id: 'AwsSolutions::AwsSolutions-IAM5[Resource::*]',
        reason: 'ecr:GetAuthorizationToken (the execution role pulling the image) has no resource to scope to.',
      });
    }
  }
}
