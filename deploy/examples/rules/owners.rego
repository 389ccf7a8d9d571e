# Every table names an owner: a team that answers for it.
package switchboard.catalog.owners

import rego.v1

deny contains {"msg": "a table must name its owner", "item": key} if {
	some key, table in input.items
	startswith(key, "tables/")
	not table.owner
}

deny contains {"msg": "a table's owner must not be empty", "item": key} if {
	some key, table in input.items
	startswith(key, "tables/")
	trim_space(table.owner) == ""
}
