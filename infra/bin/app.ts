#!/usr/bin/env node
// The cipherpost CDK app: `npx cdk synth`, `npx cdk deploy` (README, "Deploy to AWS").
// Account and region come from the CLI's environment (AWS_PROFILE / AWS_REGION, or
// CDK_DEFAULT_ACCOUNT / CDK_DEFAULT_REGION); without them the template is environment-agnostic,
// which is what `cdk synth` offline produces.
import { App } from 'aws-cdk-lib';
import { CipherpostStack } from '../lib/cipherpost-stack';

const app = new App();
const stackName: string = app.node.tryGetContext('stackName') ?? 'cipherpost';
new CipherpostStack(app, stackName, {
  env:
    process.env.CDK_DEFAULT_ACCOUNT && process.env.CDK_DEFAULT_REGION
      ? { account: process.env.CDK_DEFAULT_ACCOUNT, region: process.env.CDK_DEFAULT_REGION }
      : undefined,
  description: 'cipherpost: end-to-end encrypted messaging backend (DynamoDB, S3, Lambda, API Gateway)',
});
