/** Read-back: router command output -> records -> onionctl's objects (model terms) and foreign ones. */
export * from './records.js';
export { parseXfrmStates, parseXfrmPolicies, parseXfrmStat, xfrmTimeSeconds } from './xfrm.js';
export { parseRoutes, parseAddresses } from './route.js';
export { parseIptablesSave, parseNftRuleset, iptablesFilterRule, iptablesSnatRule, nftFilterRule, nftSnatRule, shellWords } from './firewall.js';
export * from './observed.js';
