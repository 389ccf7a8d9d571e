# Removing a column from a table tagged pii needs a second person's approval: a consumer may
# rely on it being there, masked.
package switchboard.catalog.pii

import rego.v1

approval contains {"msg": sprintf("column %s is removed from a table tagged pii", [column.name]), "item": change.key} if {
	some change in input.plan.changes
	startswith(change.key, "tables/")
	"pii" in input.previous[change.key].tags
	some step in change.changes
	step.kind == "element_removed"
	startswith(step.path, "/columns/")
	count(split(step.path, "/")) == 3
	column := step.old
}

approval contains {"msg": "a table tagged pii is removed", "item": key} if {
	some key in input.plan.removed
	startswith(key, "tables/")
	"pii" in input.previous[key].tags
}
