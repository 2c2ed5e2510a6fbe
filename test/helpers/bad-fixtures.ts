/**
 * What `onionctl validate` must say about each file in test/fixtures/bad/: the exact
 * `line:col: message` of every diagnostic, in the order printed (sorted by line). The file name
 * is prepended by the tests. Line and column point at the offending YAML node (for a missing key:
 * the mapping that lacks it). Every fixture must have an entry and every entry a fixture; the
 * tests check both ways.
 */
export const BAD_CASES: Record<string, string[]> = {
  'icmp-with-ports': [
    '42:18: routers[2].exit.allow[1].ports: ports apply to tcp and udp only: with proto icmp they would match nothing; give proto tcp or udp, or drop the ports',
  ],
  'pool-too-small': [
    '22:11: routers[0].pool: pool 100.64.1.0/31 has 2 addresses, but 3 circuits must pass through or1 (web, mail, chat), each needing one; enlarge the pool',
  ],
  'port-range-backwards': [
    '39:23: routers[2].exit.allow[0].ports[1]: port range "500-400" runs backwards; write "400-500"',
  ],
  'port-range-out-of-bounds': [
    '39:19: routers[2].exit.allow[0].ports[0]: port range "0-99999" goes outside 1-65535',
  ],
  'port-service-name': [
    '39:19: routers[2].exit.allow[0].ports[0]: "https" is not a port: a port is a number from 1 to 65535, or a range "FIRST-LAST" such as "8000-8080" (service names are not looked up)',
  ],
  'underlay-network-address': [
    '26:43: routers[1].underlay.address: 198.51.100.0/24 is the network address of its subnet, not a host address',
  ],
  'underlay-broadcast': [
    '21:43: routers[0].underlay.address: 198.51.100.255/24 is the broadcast address of its subnet, not a host address',
  ],
  'alias-bomb': [
    '5:12: YAML: Excessive alias count indicates a resource exhaustion attack',
  ],
  'bad-ipv4': [
    '15:43: routers[1].underlay.address: "198.51.100.312" is not an IPv4 address in dotted-quad form',
  ],
  'cidr-host-bits': [
    '34:10: circuits[0].to[0]: "203.0.113.80/24" has host bits set; did you mean 203.0.113.0/24?',
  ],
  'countries-impossible': [
    '35:5: circuits[0]: circuit "web" cannot be built: no path has its 3 hops in distinct countries (every router on a path needs a "country")',
  ],
  'duplicate-key': [
    '17:5: YAML: Map keys must be unique',
  ],
  'duplicate-router': [
    '21:11: routers[3].name: duplicate node name "or2" (first at routers[1])',
  ],
  'hops-1': [
    '3:7: hops: hops must be at least 2',
  ],
  'hops-5': [
    '3:7: hops: hops must be at most 4: k telescope layers plus the overlay layer go into one policy, and a real kernel carries at most 5 nested tunnel layers (it accepts 6 templates but the 6-layer bundle fails when sending)',
  ],
  'link-unknown-node': [
    '30:11: links[1][1]: unknown node "or7"',
  ],
  'missing-key': [
    '13:5: routers[1].pool: missing required key (string)',
  ],
  'no-exit-admits': [
    "32:5: circuits[0]: circuit \"web\" cannot be built: no exit admits all of the circuit's destinations (exits: or3); widen an exit's \"allow\" list",
  ],
  'operator-repeat': [
    '31:5: circuits[0]: circuit "web" cannot be built: every 3-hop path has two hops run by the same operator (decoupling); add routers of other operators or links between them',
  ],
  'overlapping-destinations': [
    '37:10: circuits[1].to[0]: destination 203.0.113.0/25 overlaps 203.0.113.80/32 of circuit "web" of the same client; each destination of a client must belong to one circuit',
  ],
  'pool-contains-underlay': [
    '16:11: routers[1].pool: pool 198.51.100.10/32 contains the underlay address 198.51.100.10 (clients.0.underlay.address)',
  ],
  'pool-overlap': [
    '20:11: routers[2].pool: pool 100.64.2.128/25 overlaps the pool of or2 (100.64.2.0/24)',
  ],
  'router-client-clash': [
    '25:11: clients[0].name: duplicate node name "or3" (first at routers[2]); routers and clients share one name space',
  ],
  'several-errors': [
    '10:15: routers[0].operator: unknown operator "nort" (known: north, middle, south)',
    '14:15: routers[1].operator: unknown operator "midle" (known: north, middle, south)',
    '27:13: clients[0].entry[0]: unknown router "or9"',
    '30:11: links[1][1]: unknown node "or7"',
  ],
  'subnets16-impossible': [
    '32:5: circuits[0]: circuit "web" cannot be built: no path has its 3 hops in distinct /16 networks',
  ],
  'unknown-entry': [
    '27:13: clients[0].entry[0]: unknown router "or9"',
  ],
  'unknown-key-nested': [
    '24:11: routers[2].exit.allow[0].port: unknown key "port"',
  ],
  'unknown-key-top': [
    '31:1: circuit: unknown key "circuit"',
  ],
  'unknown-operator': [
    '14:15: routers[1].operator: unknown operator "midle" (known: north, middle, south)',
  ],
  'unresolved-alias': [
    '27:12: YAML: Unresolved alias (the anchor must be set before the alias): entries',
  ],
  'unsafe-ifname': [
    '19:28: routers[2].underlay.interface: interface names are at most 15 characters of a-z, A-Z, 0-9, "_", "." and "-"',
  ],
  'unsafe-name-shell': [
    '13:11: routers[1].name: names must start with a lower-case letter and contain only a-z, 0-9, "_" and "-" (at most 31 characters)',
  ],
  'unsafe-name-space': [
    '25:11: clients[0].name: names must start with a lower-case letter and contain only a-z, 0-9, "_" and "-" (at most 31 characters)',
    '33:13: circuits[0].client: names must start with a lower-case letter and contain only a-z, 0-9, "_" and "-" (at most 31 characters)',
  ],
  'unsafe-name-upper': [
    '6:11: operators[1].name: names must start with a lower-case letter and contain only a-z, 0-9, "_" and "-" (at most 31 characters)',
    '14:15: routers[1].operator: names must start with a lower-case letter and contain only a-z, 0-9, "_" and "-" (at most 31 characters)',
  ],
  'wrong-type': [
    '3:7: hops: expected number, got "three"',
  ],
  'yaml-syntax-indent': [
    '16:4: YAML: Sequence item without - indicator',
  ],
  'yaml-syntax-tab': [
    '4:1: YAML: Tabs are not allowed as indentation',
  ],
};
