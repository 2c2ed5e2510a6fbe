/**
 * Objects that are not onionctl's, loaded into a namespace before onionctl's so that the kernel
 * tests see them read back as foreign and left alone. Placeholders: GW (a gateway on the
 * underlay), UL (the underlay device). One copy for every kernel test (they had drifted apart).
 */
export const FOREIGN_IP = [
  'xfrm policy add src 10.1.0.0/16 dst 10.2.0.0/16 dir out priority 100 tmpl src 192.0.2.1 dst 192.0.2.2 proto esp reqid 5 mode tunnel',
  'xfrm policy add src 10.3.0.0/16 dst 0.0.0.0/0 proto tcp dport 22 dir out priority 50 action block',
  // just below onionctl's band (0x4f00)
  'xfrm policy add src 10.5.0.0/16 dst 10.6.0.0/16 dir fwd priority 20223',
  'address add 10.30.0.1/32 dev lo',
  'route add 10.20.0.0/16 via GW dev UL',
  'route add 10.21.0.0/16 via GW dev UL proto static metric 100',
  // next to onionctl's route protocol (79)
  'route add blackhole 10.22.0.0/16 proto 80',
].join('\n');

/** iptables-restore --noflush input (UL: the underlay device); the onionctl-commented ACCEPT is not a jump into onionctl's chains */
export const FOREIGN_IPTABLES = [
  '*nat',
  '-A POSTROUTING -s 10.0.0.0/8 -o UL -j MASQUERADE',
  'COMMIT',
  '*filter',
  ':ADMIN - [0:0]',
  '-A FORWARD -s 10.0.0.0/8 -j ADMIN',
  '-A FORWARD -m comment --comment onionctl -j ACCEPT',
  '-A ADMIN -j ACCEPT',
  'COMMIT',
  '',
].join('\n');

/** nft -f input: a foreign table whose rule is commented "onionctl" */
export const FOREIGN_NFT = 'table inet admin {\n\tchain input {\n\t\ttype filter hook input priority filter; policy accept;\n\t\ttcp dport 22 accept comment "onionctl"\n\t}\n}\n';
