// Shared by the tests: synthesize the stack without bundling (no cargo, no Docker), and read
// IAM policies back as plain "action on resource" pairs with readable resource names.
import { readFileSync, readdirSync, existsSync } from 'node:fs';
import * as path from 'node:path';
import { App, CfnElement } from 'aws-cdk-lib';
import { Template } from 'aws-cdk-lib/assertions';
import { CipherpostStack } from '../lib/cipherpost-stack';
import { REPO_ROOT } from '../lib/definitions';

export interface Synth {
  stack: CipherpostStack;
  template: Template;
  json: any;
  /** logical id -> readable name (table:queue, logs:send, WebSocketApi, ...). */
  names: Map<string, string>;
}

/**
 * Synthesizes the stack with `context` (bundling skipped: the functions are not built); `change`
 * may alter the stack first (tests that prove a widened permission is seen).
 */
export function synth(
  context: Record<string, unknown> = {},
  change?: (stack: CipherpostStack) => void,
): Synth {
  const app = new App({ context: { 'aws:cdk:bundling-stacks': [], ...context } });
  const stack = new CipherpostStack(app, 'cipherpost');
  change?.(stack);
  const template = Template.fromStack(stack);
  const id = (c: { node: { defaultChild?: unknown } } | CfnElement) =>
    stack.getLogicalId((c instanceof CfnElement ? c : c.node.defaultChild) as CfnElement);
  const names = new Map<string, string>();
  for (const [logical, t] of Object.entries(stack.tables)) names.set(id(t), `table:${logical}`);
  for (const [logical, b] of Object.entries(stack.buckets)) names.set(id(b), `bucket:${logical}`);
  for (const [fn, f] of Object.entries(stack.functions)) {
    names.set(id(f), `function:${fn}`);
    names.set(id(f.logGroup as unknown as { node: { defaultChild?: unknown } }), `logs:${fn}`);
    if (f.role) names.set(id(f.role as unknown as { node: { defaultChild?: unknown } }), `role:${fn}`);
  }
  names.set(id(stack.webSocketApi), 'WebSocketApi');
  names.set(id(stack.httpApi), 'HttpApi');
  return { stack, template, json: template.toJSON(), names };
}

/** Renders a CloudFormation value (Ref, GetAtt, Join) as a string with readable names. */
export function render(v: any, names: Map<string, string>): string {
  if (typeof v === 'string') return v;
  if (v && typeof v === 'object') {
    if ('Ref' in v) return names.get(v.Ref) ?? `\${${v.Ref}}`;
    if ('Fn::GetAtt' in v) {
      const [res, attr] = v['Fn::GetAtt'];
      const n = names.get(res) ?? res;
      return attr === 'Arn' ? n : `${n}.${attr}`;
    }
    if ('Fn::Join' in v) {
      const [sep, parts] = v['Fn::Join'];
      return parts.map((p: any) => render(p, names)).join(sep);
    }
  }
  throw new Error(`cannot render ${JSON.stringify(v)}`);
}

const list = <T>(x: T | T[] | undefined): T[] => (x === undefined ? [] : Array.isArray(x) ? x : [x]);

/**
 * Everything a function's role may do, as sorted "action on resource" strings. Fails on anything
 * that cannot be expressed that way (Deny, NotAction, conditions, managed or inline role policies).
 */
export function permissionsOf(s: Synth, fn: string): string[] {
  const fnResource = Object.entries<any>(s.json.Resources).find(
    ([lid]) => s.names.get(lid) === `function:${fn}`,
  );
  if (!fnResource) throw new Error(`no function ${fn}`);
  const roleId = fnResource[1].Properties.Role['Fn::GetAtt'][0];
  const role = s.json.Resources[roleId];
  if (role.Type !== 'AWS::IAM::Role') throw new Error(`${fn}: role ${roleId} is not a role`);
  if (role.Properties.ManagedPolicyArns?.length) throw new Error(`${fn}: role has managed policies`);
  if (role.Properties.Policies?.length) throw new Error(`${fn}: role has inline policies`);
  const assume = role.Properties.AssumeRolePolicyDocument.Statement;
  if (assume.length !== 1 || assume[0].Principal?.Service !== 'lambda.amazonaws.com' || assume[0].Action !== 'sts:AssumeRole') {
    throw new Error(`${fn}: role must be assumable by Lambda only: ${JSON.stringify(assume)}`);
  }
  const out: string[] = [];
  for (const r of Object.values<any>(s.json.Resources)) {
    if (r.Type !== 'AWS::IAM::Policy' && r.Type !== 'AWS::IAM::ManagedPolicy') continue;
    const attached = [...list(r.Properties.Roles)].some((x: any) => x.Ref === roleId);
    if (!attached) continue;
    for (const st of r.Properties.PolicyDocument.Statement) {
      if (st.Effect !== 'Allow' || st.NotAction || st.NotResource || st.Condition) {
        throw new Error(`${fn}: unexpected statement ${JSON.stringify(st)}`);
      }
      for (const a of list<string>(st.Action)) {
        for (const res of list(st.Resource)) out.push(`${a} on ${render(res, s.names)}`);
      }
    }
  }
  return [...new Set(out)].sort();
}

/** The binaries of the function crates: functions/<dir>/Cargo.toml [[bin]] names, by folder. */
export function crateBinaries(): Map<string, string[]> {
  const root = path.join(REPO_ROOT, 'functions');
  const out = new Map<string, string[]>();
  for (const dir of readdirSync(root).sort()) {
    const manifest = path.join(root, dir, 'Cargo.toml');
    if (!existsSync(manifest)) continue;
    const text = readFileSync(manifest, 'utf8');
    const bins: string[] = [];
    for (const section of text.split(/^\[\[bin\]\]\s*$/m).slice(1)) {
      const m = section.split(/^\[/m)[0].match(/^\s*name\s*=\s*"([^"]+)"/m);
      if (m) bins.push(m[1]);
    }
    // A package without [[bin]] but with src/main.rs has a binary named after the package.
    if (bins.length === 0 && existsSync(path.join(root, dir, 'src', 'main.rs'))) {
      const m = text.match(/^\s*name\s*=\s*"([^"]+)"/m);
      if (m) bins.push(m[1]);
    }
    if (bins.length > 0) out.set(dir, bins);
  }
  return out;
}

/** Resources of one type, by logical id. */
export function resources(s: Synth, type: string): [string, any][] {
  return Object.entries<any>(s.json.Resources).filter(([, r]) => r.Type === type);
}
