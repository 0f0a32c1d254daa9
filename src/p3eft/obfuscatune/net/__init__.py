"""ObfuscaTune's parties on the network runtime: role factories, the model owner's upload, the
data owner's attested link, and the demo. The runtime (:mod:`p3eft.runtime`) knows no scheme; this
package is where ObfuscaTune plugs into it."""
