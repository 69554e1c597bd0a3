#!/usr/bin/env node
// The queue-worker CDK app: one env-agnostic stack with a QueueWorkerService in an existing VPC.
// Everything comes from context (-c name=value), so `cdk synth` needs no AWS account and makes
// no lookups:
//   image              the worker image URI (an ECR URI gets pull rights on that repository only)
//   vpcId              the VPC
//   subnetIds          comma-separated subnet ids for the tasks
//   availabilityZones  comma-separated, one per subnet id, in the same order
//   securityGroupId    optional; default: a new outbound-only security group
//   cluster            optional existing cluster name (Container Insights on); default: a new one
//   concurrency, minTasks, maxTasks, jobSeconds, acceptableLatencySeconds, maxReceiveCount
//   assignPublicIp     true in public subnets without a NAT gateway
//   stackName          default QueueWorker
// Example: npx cdk deploy -c image=... -c vpcId=vpc-... -c subnetIds=subnet-a,subnet-b \
//            -c availabilityZones=us-east-1a,us-east-1b -c minTasks=0 -c maxTasks=4
import { App, CfnOutput, CliCredentialsStackSynthesizer, Duration, Stack, Validations, aws_ec2 as ec2, aws_ecr as ecr, aws_ecs as ecs } from 'aws-cdk-lib';
import { AwsSolutionsChecks } from 'cdk-nag';
import { QueueWorkerService } from '../lib/queue-worker-service';

const app = new App();

function context(name: string, fallback?: string): string {
  const value = app.node.tryGetContext(name) ?? fallback;
  if (value === undefined || value === '') {
    throw new Error(`missing context value: pass -c ${name}=... (see the header of deploy/cdk/bin/app.ts)`);
  }
  return String(value);
}

function contextNumber(name: string, fallback: number): number {
  const value = Number(context(name, String(fallback)));
  if (!Number.isFinite(value)) throw new Error(`context ${name} must be a number`);
  return value;
}

function list(name: string): string[] {
  return context(name)
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s !== '');
}

// An ECR image (<account>.dkr.ecr.<region>.amazonaws.com/<repository>[:tag|@digest]) is pulled
// with a grant on exactly its repository; any other reference is pulled as it is.
function containerImage(scope: Stack, uri: string): ecs.ContainerImage {
  const m = /^(\d{12})\.dkr\.ecr\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?\/([^:@]+)(?::([^@]+))?(?:@(.+))?$/.exec(uri);
  if (!m) return ecs.ContainerImage.fromRegistry(uri);
  const [, account, region, name, tag, digest] = m;
  const repository = ecr.Repository.fromRepositoryAttributes(scope, 'ImageRepository', {
    repositoryName: name,
    repositoryArn: `arn:${scope.partition}:ecr:${region}:${account}:repository/${name}`,
  });
  return ecs.ContainerImage.fromEcrRepository(repository, digest ?? tag ?? 'latest');
}

// No account or region: the stack deploys wherever the CLI's credentials point. No assets, so
// the CLI's credentials are enough (no bootstrap stack needed).
const stack = new Stack(app, context('stackName', 'QueueWorker'), {
  description: 'queue-worker, an SQS worker that holds ECS task scale-in protection while jobs run (Fargate service, queue, DLQ, autoscaling).',
  synthesizer: new CliCredentialsStackSynthesizer(),
});

const subnetIds = list('subnetIds');
const availabilityZones = list('availabilityZones');
if (subnetIds.length !== availabilityZones.length) {
  throw new Error('subnetIds and availabilityZones need the same number of entries (one zone per subnet)');
}
const vpc = ec2.Vpc.fromVpcAttributes(stack, 'Vpc', {
  vpcId: context('vpcId'),
  availabilityZones,
  privateSubnetIds: subnetIds,
});
// Subnets imported by id have no route table id; nothing here reads it.
Validations.of(vpc).acknowledge({
  id: 'Annotation::@aws-cdk/aws-ec2:noSubnetRouteTableId',
  reason: 'The stack never reads the imported subnets\' route tables.',
});
const securityGroupId = app.node.tryGetContext('securityGroupId');
const clusterName = app.node.tryGetContext('cluster');

const worker = new QueueWorkerService(stack, 'Worker', {
  image: containerImage(stack, context('image')),
  vpc,
  securityGroup: securityGroupId ? ec2.SecurityGroup.fromSecurityGroupId(stack, 'SecurityGroup', securityGroupId) : undefined,
  assignPublicIp: String(app.node.tryGetContext('assignPublicIp') ?? 'false') === 'true',
  cluster: clusterName ? ecs.Cluster.fromClusterAttributes(stack, 'Cluster', { clusterName, vpc }) : undefined,
  concurrency: contextNumber('concurrency', 10),
  minTasks: contextNumber('minTasks', 0),
  maxTasks: contextNumber('maxTasks', 4),
  jobTime: Duration.seconds(contextNumber('jobSeconds', 30)),
  acceptableLatency: Duration.seconds(contextNumber('acceptableLatencySeconds', 60)),
  maxReceiveCount: contextNumber('maxReceiveCount', 5),
});

new CfnOutput(stack, 'QueueUrl', { value: worker.queue.queueUrl, description: 'Send jobs here.' });
new CfnOutput(stack, 'DeadLetterQueueUrl', { value: worker.deadLetterQueue.queueUrl, description: 'Messages that failed maxReceiveCount times.' });
new CfnOutput(stack, 'ClusterName', { value: worker.cluster.clusterName });
new CfnOutput(stack, 'ServiceName', { value: worker.service.serviceName });

// cdk-nag's AWS Solutions rules: an unsuppressed finding is an error and fails `cdk synth`.
Validations.of(app).addPlugins(new AwsSolutionsChecks(app, { verbose: true }));
