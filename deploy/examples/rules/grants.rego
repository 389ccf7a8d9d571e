# No access policy grants to everyone: an allowing policy names its groups and roles.
package switchboard.catalog.grants

import rego.v1

everyone := {"*", "group:all-employees", "group:everyone"}

deny contains {"msg": sprintf("an allowing access policy may not grant to %s", [who]), "item": key} if {
	some key, policy in input.items
	startswith(key, "policies/")
	policy.effect == "allow"
	some who in policy.principals
	who in everyone
}
