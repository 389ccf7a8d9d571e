#!/usr/bin/env bash
# The mutation check of the guards (issue 16): removes or inverts each guard of the table
# below in turn, builds, and runs the test that pins it; the test must fail. A guard whose test
# still passes without it is reported as SURVIVED, and the script exits 1.
#
#   scripts/mutants.sh            every guard (about an hour here: each mutant is a rebuild)
#   scripts/mutants.sh janitor    the guards whose name contains "janitor"
#
# First every test of the table runs on the unmutated tree and must pass, so that a failure
# under a mutant means the mutant, not a broken test. The mutants are made in the working tree
# (so that cargo rebuilds incrementally) and each file is restored after its mutant and on any
# exit; the files must have no uncommitted changes when it starts. The report, a Markdown
# table, goes to stdout and to target/mutants/report.md.
#
# A row of the table: name, file, anchor, guard, mutation, test, separated by tabs.
# - anchor: text that occurs once in the file, before the guard ("-" for the file's start);
# - guard: the first text after the anchor that is replaced, whitespace-insensitive (a space
#   in it matches any run of spaces and line breaks, or none);
# - mutation: what replaces it ("-" removes it);
# - test: the arguments of `cargo test` that run the test pinning the guard.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO=${CARGO:-cargo}
FILTER=${1:-}
OUT=target/mutants
mkdir -p "$OUT"
REPORT="$OUT/report.md"

races() { printf -- '-p switchboard-tests --test races -- --exact %s' "$1"; }

TABLE=$(cat <<EOF
routing: routing key	coordinator/src/routing/commit.rs	let mut compares = vec![	unchanged(keys.routing(ns), state.routing.mod_revision),	-	$(races routing_written_under_a_paused_flip_makes_it_a_conflict)
routing: rollout record	coordinator/src/routing/commit.rs	let mut compares = vec![	unchanged(keys.rollout(ns), state.rollout.mod_revision),	-	$(races a_rollout_record_changed_under_a_paused_canary_is_read_again)
routing: policy	coordinator/src/routing/commit.rs	let mut compares = vec![	unchanged(keys.policy(ns), state.policy.mod_revision),	-	$(races a_policy_that_requires_approval_under_a_paused_flip_refuses_it)
routing: approval exists	coordinator/src/routing/commit.rs	-	compares.push(Compare::version(key.clone(), CompareOp::Greater, 0));	-	$(races an_approval_withdrawn_under_a_paused_flip_refuses_it)
routing: gate's etcd key	coordinator/src/gates.rs	GateCheck::Etcd {	evaluation .compares .push(unchanged(key.clone(), kv.map_or(0, |kv| kv.mod_revision())));	-	$(races a_gate_key_that_changes_after_the_check_refuses_the_flip)
routing: target slot	coordinator/src/routing/commit.rs	-	for slot in decision.compare_slots {	for slot in decision.compare_slots.into_iter().take(0) {	$(races a_slot_restaged_under_a_paused_flip_is_not_flipped_to)
routing: leader's fence	coordinator/src/routing/commit.rs	-	compares.extend(fence.map(Fence::compare));	-	$(races a_deposed_leaders_changes_and_deletions_are_refused)
routing: why a fenced write failed	coordinator/src/routing/commit.rs	-	if fence.is_some() && !self.still_leader(fence).await? {	if false {	$(races a_deposed_leaders_changes_and_deletions_are_refused)
audit: next record's key free	coordinator/src/release/audited.rs	pub(crate) fn append_audit_record(	compares.push(absent(keys.audit(ns, record.seq)));	-	$(races an_audit_head_behind_its_records_refuses_changes_instead_of_overwriting)
stage: routing	coordinator/src/release/staging.rs	// The slot must still be idle	unchanged(keys.routing(ns), state.routing.mod_revision),	-	$(races a_slot_that_starts_serving_after_a_stage_chose_it_is_not_staged_into)
stage: slot	coordinator/src/release/staging.rs	// The slot must still be idle	unchanged(keys.slot(ns, slot), current.mod_revision),	-	$(races the_same_set_staged_twice_at_once_is_sealed_once)
seal: routing	coordinator/src/release/staging.rs	let history = HistoryEntry::of_sealed(&sealed);	unchanged(keys.routing(ns), state.routing.mod_revision),	-	$(races a_slot_that_starts_serving_under_a_paused_seal_is_not_sealed)
seal: slot	coordinator/src/release/staging.rs	let history = HistoryEntry::of_sealed(&sealed);	unchanged(keys.slot(ns, slot), current.mod_revision),	-	$(races a_slot_claimed_by_another_stage_under_a_paused_seal_is_not_sealed)
seal: contract	coordinator/src/release/staging.rs	let history = HistoryEntry::of_sealed(&sealed);	unchanged(keys.contract(ns), judgement.contract_revision),	-	$(races a_contract_rewritten_under_a_paused_seal_makes_it_a_conflict)
record: the record changed	coordinator/src/routing/commit.rs	pub(crate) async fn change_record<T>(	let compares = vec![unchanged(key.clone(), revision)];	let compares: Vec<Compare> = Vec::new();	$(races a_policy_edit_is_not_lost_to_a_concurrent_one)
contract set: contract in force	coordinator/src/contract.rs	-	unchanged(keys.contract(ns), read.active.mod_revision),	-	$(races a_contract_set_against_a_contract_replaced_meanwhile_is_a_conflict)
contract set: proposal	coordinator/src/contract.rs	-	unchanged(keys.contract_proposal(ns), read.proposal.mod_revision),	-	$(races a_proposal_that_appears_under_a_paused_contract_set_is_withdrawn)
contract set: policy	coordinator/src/contract.rs	-	unchanged(keys.policy(ns), read.namespace.policy.mod_revision),	-	$(races a_contract_set_under_a_policy_that_starts_requiring_approval_is_proposed)
contract approve: contract in force	coordinator/src/contract.rs	action: "contract-approved",	unchanged(keys.contract(ns), read.active.mod_revision),	-	$(races an_approval_records_the_contract_it_really_replaced)
contract approve: proposal	coordinator/src/contract.rs	action: "contract-approved",	unchanged(keys.contract_proposal(ns), read.proposal.mod_revision),	-	$(races a_proposal_replaced_under_a_paused_approval_is_not_put_in_force)
janitor: routing	coordinator/src/janitor.rs	-	unchanged(keys.routing(ns), state.routing.mod_revision),	-	$(races a_version_routing_starts_naming_while_the_janitor_decides_stays_whole)
janitor: blue slot	coordinator/src/janitor.rs	-	unchanged( keys.slot(ns, Slot::Blue), state.slot(Slot::Blue).mod_revision, ),	-	$(races a_version_staged_again_into_blue_while_the_janitor_decides_stays_whole)
janitor: green slot	coordinator/src/janitor.rs	-	unchanged( keys.slot(ns, Slot::Green), state.slot(Slot::Green).mod_revision, ),	-	$(races a_version_staged_again_into_green_while_the_janitor_decides_stays_whole)
janitor: leader's fence	coordinator/src/janitor.rs	-	compares.extend(fence.map(Fence::compare));	-	$(races a_deposed_leaders_changes_and_deletions_are_refused)
canary: seed of the draw	proto/src/bucket.rs	pub fn on_canary(	bucket(consumer, seed)	bucket(consumer, 0)	-p switchboard-proto --lib -- --exact bucket::tests::each_version_draws_its_own_canary_population
canary: seed of each version	coordinator/src/release/staging.rs	-	seed: switchboard_proto::bucket::seed_for_checksum(&manifest.checksum),	seed: 0,	-p switchboard-tests --test sidecar -- --exact each_version_sends_its_own_consumers_to_the_canary_first
set: chunk hash	proto/src/set.rs	pub fn decode_chunk(	if actual != expected_hash {	if false {	-p switchboard-proto --lib -- --exact set::tests::a_chunk_is_checked_against_its_hash
set: set checksum	proto/src/set.rs	let checksum = hex::encode(self.checksum.finalize());	if checksum != self.manifest.checksum {	if false {	-p switchboard-proto --lib -- --exact set::tests::chunks_under_another_sets_checksum_are_refused
sidecar: disk copy hash	sidecar/src/cache.rs	pub fn decode(	if Sha256::digest(content).as_slice() != trailer {	if false {	-p switchboard-sidecar --lib -- --exact cache::tests::any_changed_or_missing_byte_is_refused
approval: not the stager	coordinator/src/release/audited.rs	pub async fn approve(	if staged_by == actor.name {	if false {	-p switchboard-tests --test safety -- --exact a_release_needs_the_approval_of_a_second_person_for_its_exact_version
approval: counted only from another	coordinator/src/store.rs	pub fn approval_of(	a.approved_by != staged_by	true	-p switchboard-tests --test safety -- --exact an_approval_by_whoever_restages_a_version_does_not_count
approval: contract not by its proposer	coordinator/src/contract.rs	-	if proposed.set_by == actor.name {	if false {	-p switchboard-tests --test contract -- --exact a_contract_change_waits_for_another_persons_approval
audit chain: content hash	coordinator/src/audit.rs	-	} else if record.compute_hash() != record.hash {	} else if false {	-p switchboard-coordinator --lib -- --exact audit::tests::one_changed_byte_names_its_record
audit chain: link to the record before	coordinator/src/audit.rs	-	} else if record.prev_hash != previous_hash {	} else if false {	-p switchboard-coordinator --lib -- --exact audit::tests::a_rewritten_record_with_its_hash_recomputed_is_caught_by_the_next
audit chain: sequence	coordinator/src/audit.rs	-	if record.seq != expected_seq {	if false {	-p switchboard-coordinator --lib -- --exact audit::tests::a_removed_record_is_named_by_its_number
audit chain: head present	coordinator/src/audit.rs	-	if problem.is_none() && head.is_none() && !raw.is_empty() {	if false {	-p switchboard-coordinator --lib -- --exact audit::tests::a_missing_head_is_caught
audit chain: head matches	coordinator/src/audit.rs	-	&& (head.seq != raw.len() as u64 || head.hash != previous_hash)	&& false	-p switchboard-coordinator --lib -- --exact audit::tests::a_removed_last_record_is_caught_by_the_head
outcomes: only the leader takes them	coordinator/src/grpc.rs	async fn report_outcomes(	if !*leading.borrow_and_update() {	if false {	-p switchboard-tests --test judge -- --exact outcomes_go_only_to_the_leader_and_a_reporter_may_do_nothing_else
outcomes: a reporter does nothing else	coordinator/src/auth/mod.rs	-	Role::Reporter => rpc == ReportOutcomes,	Role::Reporter => true,	-p switchboard-tests --test judge -- --exact outcomes_go_only_to_the_leader_and_a_reporter_may_do_nothing_else
judge: significance	proto/src/judge.rs	-	Some(z) if z <= Z_THRESHOLD => verdict(	Some(z) if false => verdict(	-p switchboard-proto --lib -- --exact judge::tests::a_healthy_canary_passes_even_when_noisy
health: a lease etcd forgot is dropped	sidecar/src/health.rs	-	if error.downcast_ref::<LoadError>().is_some_and(lease_is_gone) {	if false {	-p switchboard-tests --test sidecar -- --exact a_health_publisher_whose_lease_etcd_forgot_takes_a_new_one
rate limit: outcome streams by address	coordinator/src/auth/admission.rs	-	let caller = if rpc == Rpc::ReportOutcomes {	let caller = if false {	-p switchboard-coordinator --lib -- --exact grpc::tests::outcome_streams_are_rate_limited_by_address_and_the_rest_by_user
convergence: the sidecars behind	coordinator/src/convergence.rs	fn update(	Some(record) if Self::epoch_of(record, streamed) < self.epoch =>	Some(_) =>	-p switchboard-tests --test judge -- --exact wait_for_epoch_follows_the_sidecars_and_names_those_behind
leader: the term ends before the lease may expire	coordinator/src/leader.rs	-	() = tokio::time::sleep_until(lives_until - EXPIRY_MARGIN) => {	() = std::future::pending::<()>() => {	-p switchboard-tests --test faults -- --exact a_leader_cut_off_from_etcd_stops_before_another_is_elected
pinned reads: the snapshot read under the lock of the replaced sets	sidecar/src/namespace.rs	pub fn held_set(	        let snapshot = self.current();	        let snapshot = { drop(replaced); self.current() }; let replaced = lock(&self.replaced);	-p switchboard-sidecar --lib -- --exact tests::feed::a_held_set_is_found_at_every_instant_of_flips_and_rollbacks
convergence: a streamed epoch counts	coordinator/src/convergence.rs	-	        record.epoch.max(said.unwrap_or(0))	        record.epoch	-p switchboard-tests --test judge -- --exact a_sidecar_whose_stream_names_the_epoch_counts_before_its_record_does
convergence: a routing applied is streamed at once	sidecar/src/outcomes.rs	-	                    epochs_owed = self.epochs() != epochs_sent;	                    epochs_owed = false;	-p switchboard-tests --test judge -- --exact a_sidecar_whose_stream_names_the_epoch_counts_before_its_record_does
outcomes: a silent sidecar's epochs are forgotten	coordinator/src/outcomes.rs	-	            silent = entry.open_streams == 0;	            silent = false;	-p switchboard-coordinator --lib -- --exact outcomes::tests::a_streamed_epoch_lasts_while_a_stream_of_its_sidecar_is_open
acknowledgements: a sidecar spreads its health record as routing asks	sidecar/src/sync.rs	-	        if let Some(spread) = acknowledgement_delay(&snapshot.routing) {	        if let Some(spread) = None::<Duration> {	-p switchboard-tests --test judge -- --exact a_fleet_larger_than_the_acknowledgement_rate_spreads_its_records
health records: read in pages before they are watched	coordinator/src/store.rs	-	            let (pairs, revision) = self.range_in_pages(key, VALUES_PER_READ, false).await?;	            let (pairs, revision) = self.range_in_pages(key, 0, false).await?;	-p switchboard-tests --test capacity -- --exact watched_records_under_a_prefix_are_read_past_one_answers_limit
EOF
)

rows() { printf '%s\n' "$TABLE" | awk -F'\t' -v f="$FILTER" 'f == "" || index($1, f)'; }

# Every file the table mutates must be as committed, so that restoring it is always possible.
# A file not committed at all shows no difference to `git diff`, and restoring it from HEAD
# fails: a run on a moved file once left its mutant in place, and the mutant got committed.
files=$(rows | cut -f2 | sort -u)
for file in $files; do
    if ! git cat-file -e "HEAD:$file" 2>/dev/null; then
        echo "mutants: $file is not committed; commit it first" >&2
        exit 2
    fi
    if ! git diff --quiet HEAD -- "$file"; then
        echo "mutants: $file has uncommitted changes; commit or stash them first" >&2
        exit 2
    fi
done
# A property test that fails under a mutant saves its case in a proptest-regressions file next
# to the source; those the mutants made are removed with the mutant.
regressions() { git ls-files --others --exclude-standard | grep '/proptest-regressions/' || true; }
regressions_before=$(regressions)
restore() {
    git checkout -q HEAD -- $files
    for file in $(regressions); do
        if ! grep -qxF "$file" <<<"$regressions_before"; then
            rm -f "$file"
            rmdir --ignore-fail-on-non-empty "$(dirname "$file")"
        fi
    done
}
trap restore EXIT

# Replaces the first match of GUARD after ANCHOR in FILE with MUTATION; fails when the anchor
# is missing or not unique, or when the guard is not found after it.
mutate() {
    local mutation=$4
    [[ $mutation == - ]] && mutation=""
    ANCHOR=$2 GUARD=$3 MUTATION=$mutation perl -0777 -i -pe '
        my ($anchor, $guard, $mutation) = @ENV{qw(ANCHOR GUARD MUTATION)};
        my $start = 0;
        if ($anchor ne "-") {
            $start = index($_, $anchor);
            die "the anchor is not in the file\n" if $start < 0;
            die "the anchor is in the file twice\n" if index($_, $anchor, $start + 1) >= 0;
        }
        my $pattern = join("\\s*", map { quotemeta } split(/\s+/, $guard));
        my $tail = substr($_, $start);
        $tail =~ s/$pattern/$mutation/ or die "the guard is not after the anchor\n";
        $_ = substr($_, 0, $start) . $tail;
    ' "$1"
}

# Builds what the test needs (the end-to-end tests start the binaries) and runs it quietly.
run_test() {
    local args=$1 log=$2
    {
        if [[ $args == *switchboard-tests* ]]; then
            $CARGO build --workspace --bins --quiet
        fi
        # shellcheck disable=SC2086 # the arguments are words
        timeout 900 $CARGO test --quiet $args
    } >"$log" 2>&1
}

echo "mutants: the tests on the unmutated tree first" >&2
for args in $(rows | cut -f6 | sort -u | tr ' ' '\001'); do
    args=${args//$'\001'/ }
    if ! run_test "$args" "$OUT/baseline.log"; then
        echo "mutants: the test fails without any mutant: cargo test $args (see $OUT/baseline.log)" >&2
        exit 2
    fi
done

survived=0
{
    echo "| guard | mutation | test | result |"
    echo "| --- | --- | --- | --- |"
} | tee "$REPORT"
while IFS=$'\t' read -r name file anchor guard mutation args; do
    started=$SECONDS
    if ! mutate "$file" "$anchor" "$guard" "$mutation"; then
        echo "mutants: $name: cannot apply the mutant to $file; update the table" >&2
        exit 2
    fi
    log="$OUT/$(printf '%s' "$name" | tr -c 'a-zA-Z0-9' '-').log"
    if run_test "$args" "$log"; then
        result="SURVIVED"
        survived=$((survived + 1))
    elif grep -q "^error\(\[E[0-9]*\]\)\?:" "$log" && ! grep -q "^test result" "$log"; then
        result="did not build (see $log)"
        survived=$((survived + 1))
    else
        result="killed ($((SECONDS - started)) s)"
    fi
    restore
    test_name=${args##* }
    shown_mutation=$mutation
    [[ $mutation == - ]] && shown_mutation="(removed)"
    printf '| %s (`%s`) | `%s` → `%s` | `%s` | %s |\n' \
        "$name" "$file" "$guard" "$shown_mutation" "$test_name" "$result" | tee -a "$REPORT"
done < <(rows)

if ((survived > 0)); then
    echo "mutants: $survived guards survived or did not build" >&2
    exit 1
fi
echo "mutants: every guard is pinned by a failing test ($REPORT)" >&2
